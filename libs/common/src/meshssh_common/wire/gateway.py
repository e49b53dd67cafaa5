"""Browser terminal tickets: policy issues them, a gateway peer redeems them (issue 20).

The dashboard stores a :class:`GatewayTicket` in the policy-private KV bucket
``meshssh-gateway-tickets`` under the SHA-256 of the ticket (never the ticket itself). The
gateway redeems the ticket once with a :class:`TicketRedeem` on
``meshssh.policy.v1.req.gateway-ticket.<gateway peer id>`` and gets a :class:`TicketGrant` or a
:class:`TicketRefusal`, in its own inbox only.

Example::

    reply = await nc.request(subjects.gateway_ticket(my_id),
                             encode(TicketRedeem(ticket=t, session=cookie, browser_addr=ip)))
    answer = decode(reply.data, TicketGrant | TicketRefusal)
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from meshssh_common.wire.base import MeshIp, PeerId, Port, Wire

__all__ = [
    "TICKET_TTL",
    "GatewayTicket",
    "RefusalReason",
    "TicketGrant",
    "TicketRedeem",
    "TicketRefusal",
]

TICKET_TTL = 60.0
"""Seconds a ticket lives (the bucket's max age, and the ticket's own ``expires_at``)."""

_Text = Annotated[str, msgspec.Meta(max_length=512)]
_Token = Annotated[str, msgspec.Meta(max_length=16384)]
_Ticket = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Secret = Annotated[str, msgspec.Meta(max_length=256)]
# a real account name, as policy's API allows them (never the "*" wildcard)
LocalUser = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}\Z")]

RefusalReason = Literal[
    "bad_request",  # malformed TicketRedeem
    "not_gateway",  # the requesting peer is not registered with a gateway setup key
    "unknown_ticket",  # no such ticket: never issued, already used, or aged out of the bucket
    "expired",  # found, but past its expires_at
    "wrong_session",  # the session cookie is not the one that asked for the ticket
    "peer_gone",  # the target peer was removed (or reports no SSH port) since the ticket
    "unavailable",  # policy could not read or delete the ticket (bus trouble); try again
]


class GatewayTicket(Wire, tag="policy.gateway-ticket.v1", frozen=True, kw_only=True):
    """A one-time browser terminal ticket, as stored (keyed by the ticket's SHA-256).

    ``session_hash`` is the hex SHA-256 of the dashboard session id that asked for it;
    ``idp_token`` the user's token from the dashboard sign-in (the gateway exchanges it at
    authn for a per-peer token naming ``peer_id``).
    """

    sub: _Text
    email: _Text = ""
    name: _Text = ""
    idp_token: _Token
    peer_id: PeerId
    local_user: LocalUser
    browser_addr: _Text = ""
    session_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
    issued_at: float
    expires_at: float


class TicketRedeem(Wire, tag="policy.gateway-ticket-redeem.v1", frozen=True, kw_only=True):
    """A gateway redeems a ticket.

    ``session`` is the dashboard session cookie value the gateway got with the WebSocket (it
    never stores or logs it); ``browser_addr`` the browser's address as the gateway sees it.
    """

    ticket: _Ticket
    session: _Secret
    browser_addr: _Text = ""


class TicketGrant(Wire, tag="policy.gateway-ticket-grant.v1", frozen=True, kw_only=True):
    """The ticket was good (and is now used up): whom to connect, where, as which user."""

    sub: _Text
    email: _Text = ""
    name: _Text = ""
    idp_token: _Token
    peer_id: PeerId
    peer_name: _Text = ""
    mesh_ip: MeshIp
    ssh_port: Port
    local_user: LocalUser
    browser_addr: _Text = ""  # as the dashboard saw it when it issued the ticket


class TicketRefusal(Wire, tag="policy.gateway-ticket-refusal.v1", frozen=True, kw_only=True):
    """The ticket was refused; ``message`` is for people (the browser may show it)."""

    reason: RefusalReason
    message: _Text = ""
