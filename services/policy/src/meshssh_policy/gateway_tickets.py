"""One-time browser terminal tickets: issued to the dashboard, redeemed by a gateway (issue 20).

A ticket is 32 random bytes (urlsafe base64) handed to the browser once; the policy-only KV
bucket ``meshssh-gateway-tickets`` (max age 60 s, history 1) keeps only its SHA-256, as the
key of a :class:`~meshssh_common.wire.GatewayTicket`. A gateway peer redeems it on
``meshssh.policy.v1.req.gateway-ticket.<its id>`` (the bus lets a peer publish only its own;
a peer registered without a gateway setup key may not publish there at all, and is refused
here too). Redemption deletes the entry by compare-and-set on the revision it read, so a
ticket works once, even when two gateways race for it across replicas; then it checks the
expiry and that the dashboard session cookie the gateway presents hashes to the one that asked
for the ticket. Every answer is a :class:`~meshssh_common.wire.TicketGrant` or a
:class:`~meshssh_common.wire.TicketRefusal`, counted by result; tickets, tokens and cookies
are never logged.

Example::

    tickets = await GatewayTickets.open(js, state, metrics, log)
    ticket = await tickets.issue(ticket_fields)           # to the browser, once
    answer = await tickets.redeem(TicketRedeem(...), subject)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from nats.js import JetStreamContext

from meshssh_common import subjects
from meshssh_common.errors import Conflict, Unavailable, WireError
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import (
    TICKET_TTL,
    GatewayTicket,
    RefusalReason,
    TicketGrant,
    TicketRedeem,
    TicketRefusal,
)
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.state import State

__all__ = ["GatewayTickets", "ticket_key"]

_PREFIX = subjects.GATEWAY_TICKET_ALL[:-1]  # "...gateway-ticket."
_MESSAGES: dict[RefusalReason, str] = {
    "bad_request": "malformed ticket request",
    "not_gateway": "this peer is not a gateway (register it with a gateway setup key)",
    "unknown_ticket": "the terminal ticket is unknown or was already used: connect again",
    "expired": "the terminal ticket expired: connect again",
    "wrong_session": "the terminal ticket belongs to another dashboard sign-in",
    "peer_gone": "the peer is gone or reports no SSH port",
    "unavailable": "policy could not check the ticket now: try again",
}


def ticket_key(ticket: str) -> str:
    """The KV key of ``ticket``: ``t.<hex SHA-256>`` (the ticket itself is never stored)."""
    return subjects.gateway_ticket_key(hashlib.sha256(ticket.encode()).hexdigest())


class GatewayTickets:
    """Issues, shows and redeems browser terminal tickets."""

    def __init__(
        self,
        kv: TypedKV[GatewayTicket],
        state: State,
        metrics: PolicyMetrics,
        log: BoundLogger,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.state = state
        self.metrics = metrics
        self.log = log
        self.clock = clock

    @classmethod
    async def open(
        cls, js: JetStreamContext, state: State, metrics: PolicyMetrics, log: BoundLogger
    ) -> GatewayTickets:
        """Open (or create) the bucket; reads come from the stream leader (compare-and-set)."""
        kv = await open_bucket(
            js, subjects.BUCKET_GATEWAY_TICKETS, history=1, ttl=TICKET_TTL, consistent=True
        )
        return cls(TypedKV(kv, GatewayTicket), state, metrics, log)

    async def issue(
        self,
        *,
        sub: str,
        email: str,
        name: str,
        idp_token: str,
        peer_id: str,
        local_user: str,
        browser_addr: str,
        session_hash: str,
    ) -> str:
        """Store a new ticket (by its hash) and return it; it lives :data:`TICKET_TTL` s.

        Raises:
            Unavailable: JetStream did not answer.
        """
        ticket = secrets.token_urlsafe(32)
        now = self.clock()
        record = GatewayTicket(
            sub=sub,
            email=email[:512],
            name=name[:512],
            idp_token=idp_token,
            peer_id=peer_id,
            local_user=local_user,
            browser_addr=browser_addr[:512],
            session_hash=session_hash,
            issued_at=now,
            expires_at=now + TICKET_TTL,
        )
        await self.kv.create(ticket_key(ticket), record)
        self.metrics.terminal_tickets.labels(result="issued").inc()
        self.log.info(
            "terminal ticket issued",
            extra={"user": sub, "peer": peer_id, "local_user": local_user},
        )
        return ticket

    async def peek(self, ticket: str, session_hash: str) -> GatewayTicket | None:
        """The ticket's record, if it is live and belongs to this session (it stays unused).

        Raises:
            Unavailable: JetStream did not answer.
        """
        if not ticket or len(ticket) > 128:
            return None
        try:
            entry = await self.kv.get(ticket_key(ticket))
        except WireError:
            return None
        if entry is None or entry.value.expires_at <= self.clock():
            return None
        if not hmac.compare_digest(entry.value.session_hash, session_hash):
            return None
        return entry.value

    async def redeem(self, req: TicketRedeem, subject: str) -> TicketGrant | TicketRefusal:
        """The bus endpoint: use up the ticket, then grant it or say why not."""
        requester = subject[len(_PREFIX) :] if subject.startswith(_PREFIX) else ""
        answer = await self._redeem(req, requester)
        if isinstance(answer, TicketRefusal):
            self.metrics.ticket_redemptions.labels(result=answer.reason).inc()
            self.log.info(
                "terminal ticket refused", extra={"gateway": requester, "reason": answer.reason}
            )
        else:
            self.metrics.ticket_redemptions.labels(result="granted").inc()
            self.log.info(
                "terminal ticket granted",
                extra={
                    "gateway": requester,
                    "user": answer.sub,
                    "peer": answer.peer_id,
                    "local_user": answer.local_user,
                },
            )
        return answer

    async def _redeem(self, req: TicketRedeem, requester: str) -> TicketGrant | TicketRefusal:
        gateway = self.state.peers.get(requester) if requester else None
        if gateway is None or gateway.kind != "gateway":
            return _refuse("not_gateway")
        if not req.ticket or not req.session:
            return _refuse("bad_request")
        key = ticket_key(req.ticket)
        try:
            entry = await self.kv.get(key)
            if entry is None:
                return _refuse("unknown_ticket")
            await self.kv.delete(key, last=entry.revision)  # one use, across replicas
        except Conflict:
            return _refuse("unknown_ticket")  # another redemption won the race
        except WireError:
            return _refuse("unknown_ticket")
        except Unavailable:
            return _refuse("unavailable")
        ticket = entry.value
        if ticket.expires_at <= self.clock():
            return _refuse("expired")
        presented = hashlib.sha256(req.session.encode()).hexdigest()
        if not hmac.compare_digest(presented, ticket.session_hash):
            return _refuse("wrong_session")
        target = self.state.peers.get(ticket.peer_id)
        if target is None or not target.meta.ssh_port:
            return _refuse("peer_gone")
        return TicketGrant(
            sub=ticket.sub,
            email=ticket.email,
            name=ticket.name,
            idp_token=ticket.idp_token,
            peer_id=target.id,
            peer_name=target.name,
            mesh_ip=target.mesh_ip,
            ssh_port=target.meta.ssh_port,
            local_user=ticket.local_user,
            browser_addr=ticket.browser_addr,
        )


def _refuse(reason: RefusalReason) -> TicketRefusal:
    return TicketRefusal(reason=reason, message=_MESSAGES[reason])
