"""Redeeming a browser's one-time terminal ticket at policy (issue 20, DESIGN step 2).

One :class:`~meshssh_common.wire.TicketRedeem` on
``meshssh.policy.v1.req.gateway-ticket.<this gateway's peer id>`` (the bus lets a gateway
publish only its own; policy reads the requester from it), carrying the ticket, the dashboard
session cookie the WebSocket came with (passed through, never stored or logged) and the
browser's address. Policy deletes the ticket by compare-and-set (one use) and answers in the
gateway's own inbox with a :class:`~meshssh_common.wire.TicketGrant` or a
:class:`~meshssh_common.wire.TicketRefusal`.

Failures are :class:`~meshssh_common.errors.MeshError` whose ``public`` text the browser may
see: a refusal → :class:`Denied` (its reason is logged, its message shown); no policy
answering → :class:`Unavailable`; an answer that does not decode → :class:`WireError`.

Example::

    grant = await redeem(nc, gateway_id, ticket, cookie, "203.0.113.7", timeout=5.0)
    grant.peer_id, grant.local_user
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from meshssh_common import codec, subjects
from meshssh_common.errors import Denied, WireError, error_for_code, nats_boundary
from meshssh_common.wire import TicketGrant, TicketRedeem, TicketRefusal

__all__ = ["REDEEM_TIMEOUT", "TicketDenied", "redeem"]

REDEEM_TIMEOUT = 5.0

_PUBLIC = {
    "unknown_ticket": "this terminal link is not valid (already used or expired); "
    "open a new terminal from the dashboard",
    "expired": "this terminal link expired; open a new terminal from the dashboard",
    "wrong_session": "this terminal link belongs to another dashboard sign-in",
    "not_gateway": "this gateway is not registered as a browser gateway",
    "bad_request": "the terminal link is malformed",
    "unavailable": "the management plane could not check the terminal link; try again",
}


class TicketDenied(Denied):
    """Policy refused the ticket; ``reason`` is its :data:`RefusalReason`."""

    def __init__(self, refusal: TicketRefusal) -> None:
        public = refusal.message or _PUBLIC.get(refusal.reason, "the terminal link was refused")
        super().__init__(f"ticket refused: {refusal.reason}", public=public)
        self.refusal = refusal


_Answer = TicketGrant | TicketRefusal


async def redeem(
    nc: NATS,
    gateway_id: str,
    ticket: str,
    session: str,
    browser_addr: str,
    *,
    timeout: float = REDEEM_TIMEOUT,
) -> TicketGrant:
    """Redeem ``ticket`` (once: policy deletes it) and return what it grants.

    Args:
        nc: the gateway's bus connection.
        gateway_id: the gateway's own peer id (the subject's last token).
        ticket: the ticket from the WebSocket URL.
        session: the dashboard session cookie value ("" when the browser sent none).
        browser_addr: the browser's address as the gateway sees it.
        timeout: seconds to wait for policy.

    Raises:
        TicketDenied: policy refused the ticket.
        Unavailable: no policy answered in time.
        WireError: policy's answer did not decode.
        MeshError: policy answered with an error header (its code's error).
    """
    subject = subjects.gateway_ticket(gateway_id)
    ask = TicketRedeem(ticket=ticket, session=session, browser_addr=browser_addr[:512])
    data = codec.encode(ask)
    try:
        codec.decode(data, TicketRedeem)  # the limits (lengths) hold only on decode
    except WireError as e:
        raise TicketDenied(TicketRefusal(reason="bad_request")) from e
    with nats_boundary(subject):
        msg = await nc.request(subject, data, timeout=timeout)
    headers = msg.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise error_for_code(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""))
    answer: TicketGrant | TicketRefusal = codec.decode(msg.data, _Answer)  # type: ignore[arg-type]
    if isinstance(answer, TicketRefusal):
        raise TicketDenied(answer)
    return answer
