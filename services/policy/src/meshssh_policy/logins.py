"""First logins: management learns users from the SSH logins peers accept (SPEC §6).

sshd publishes an ``auth-accepted`` event to the durable ``MESHSSH_AUDIT`` stream for every
accepted login, with the user id (the configured user-id claim) and the token's email and
name. Every policy replica binds the same durable pull consumer, :data:`DURABLE`, filtered to
``meshssh.audit.v1.evt.auth-accepted.*``, so JetStream hands each event to one replica; the
write is a compare-and-set on ``meshssh-users``, so a redelivery or two replicas racing never
lose or duplicate a record. The consumer starts with the events stored after it was first
created: an upgrade does not replay old logins (which could bring back users an admin had
removed).

For each event, a user management does not know is created (id, email, name;
``created_at`` = ``first_seen`` = ``last_login`` = the time JetStream stored the event, not the
peer's clock). A known user gets ``last_login`` raised (``first_seen`` set if it was 0) and its
email and name refreshed when the token carried them. Nothing else of a record changes, and
group memberships (the group records) are never touched.

The bus is hostile. An event that is too large, does not decode, names another peer than its
subject, or carries an id, email or name that is empty (the id), longer than 255 characters or
holds control characters is counted (``meshssh_policy_bad_messages_total{endpoint="logins"}``
and ``meshssh_policy_login_events_total{result="bad"}``), logged and acknowledged: never
applied, never redelivered. An event from a peer management does not know, or of a machine-
identity login (no user), is ignored. A KV failure leaves the event for redelivery.

Example::

    logins = Logins(js, store, metrics, base, log)
    await logins.open()              # before declaring ready; errors are retried by run()
    tg.create_task(logins.run())
"""

from __future__ import annotations

import asyncio
import contextlib
import enum

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from meshssh_common import codec, subjects
from meshssh_common.audit_stream import ensure_audit_stream
from meshssh_common.errors import BadReason, BadRequest, MeshError, WireError
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.wire import AuditEvent
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.records import UserRecord, user_key
from meshssh_policy.store import Store

__all__ = ["DURABLE", "MAX_EVENT_BYTES", "MAX_FIELD", "Logins", "Outcome"]

DURABLE = "policy-logins"
MAX_EVENT_BYTES = 16 * 1024
MAX_FIELD = 255  # as the REST API's user id, email and name


class Outcome(enum.StrEnum):
    """What became of one accepted-login event (the ``result`` label of ``login_events``)."""

    ADDED = "added"
    UPDATED = "updated"
    IGNORED = "ignored"
    BAD = "bad"
    RETRY = "retry"


_BATCH = 64
_FETCH_WAIT = 5.0
_ACK_WAIT = 30.0
_RETRY = 2.0


class _Bad(Exception):
    """An event that must never be applied; ``reason`` is a bad_messages label."""

    def __init__(self, reason: BadReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _clean(value: str, what: str, *, required: bool = False) -> str:
    if required and not value:
        raise _Bad(BadReason.INVALID, f"empty {what}")
    if len(value) > MAX_FIELD:
        raise _Bad(BadReason.INVALID, f"{what} longer than {MAX_FIELD} characters ({len(value)})")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise _Bad(BadReason.INVALID, f"{what} holds control characters")
    return value


def _seen(current: UserRecord | None, event: AuditEvent, at: float) -> UserRecord:
    """The record after a login at ``at`` (only times, email and name ever change)."""
    if current is None:
        return UserRecord(
            id=event.jwt_user,
            email=event.email,
            name=event.name,
            created_at=at,
            first_seen=at,
            last_login=at,
        )
    first = min(current.first_seen, at) if current.first_seen else at
    return msgspec.structs.replace(
        current,
        email=event.email or current.email,
        name=event.name or current.name,
        first_seen=first,
        last_login=max(current.last_login, at),
    )


class Logins:
    """The durable consumer of accepted-login events that keeps user records current."""

    def __init__(
        self,
        js: JetStreamContext,
        store: Store,
        metrics: PolicyMetrics,
        base: ServiceMetrics,
        log: BoundLogger,
    ) -> None:
        self._js = js
        self._store = store
        self._metrics = metrics
        self._base = base
        self._log = log
        self._sub: JetStreamContext.PullSubscription | None = None

    # -- the consumer --------------------------------------------------------------------

    async def open(self) -> bool:
        """Bind the durable consumer (creating stream and consumer when missing).

        Returns:
            False when JetStream did not answer (logged; :meth:`run` tries again).
        """
        try:
            await ensure_audit_stream(self._js)
            config = ConsumerConfig(
                durable_name=DURABLE,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=_ACK_WAIT,
                max_ack_pending=1000,
            )
            self._sub = await self._js.pull_subscribe(
                subjects.AUDIT_AUTH_ACCEPTED_ALL,
                durable=DURABLE,
                stream=subjects.AUDIT_STREAM,
                config=config,
            )
        except (nats.errors.Error, TimeoutError) as e:
            self._log.warning(
                "cannot bind the first-login consumer; retrying",
                extra={"stream": subjects.AUDIT_STREAM, "error": repr(e)},
            )
            return False
        return True

    async def run(self) -> None:
        """Apply accepted-login events until cancelled (never raises on a bad event)."""
        try:
            while True:
                if self._sub is None and not await self.open():
                    await asyncio.sleep(_RETRY)
                    continue
                assert self._sub is not None
                try:
                    msgs = await self._sub.fetch(_BATCH, timeout=_FETCH_WAIT)
                except TimeoutError:
                    # nats.errors.TimeoutError, and the builtin one nats-py's fetch() raises
                    # when its deadline runs out between its two pull requests (under load):
                    # letting that escape stopped the whole policy service.
                    continue
                except nats.errors.Error as e:
                    self._log.warning("first-login fetch failed", extra={"error": repr(e)})
                    await self._drop_sub()
                    await asyncio.sleep(_RETRY)
                    continue
                for msg in msgs:
                    await self.handle(msg)
        finally:
            await self._drop_sub()

    async def _drop_sub(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- one event -----------------------------------------------------------------------

    async def handle(self, msg: Msg) -> Outcome:
        """Apply one delivered event and acknowledge it (or leave it for redelivery)."""
        try:
            outcome = await self._apply(msg)
        except _Bad as e:
            self._base.bad_messages.labels(endpoint="logins", reason=e.reason).inc()
            self._log.warning(
                "ignored a bad accepted-login event",
                extra={"subject": msg.subject[:200], "reason": e.reason, "error": str(e)[:300]},
            )
            outcome = Outcome.BAD
        except MeshError as e:  # KV unavailable or too many concurrent writers
            self._log.warning("first-login write failed; will retry", extra={"error": str(e)})
            outcome = Outcome.RETRY
        except Exception:
            self._log.exception("first-login event failed unexpectedly; will retry")
            outcome = Outcome.RETRY
        self._metrics.login_events.labels(result=outcome).inc()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            if outcome is Outcome.RETRY:
                await msg.nak(delay=_RETRY)
            else:
                await msg.ack()
        return outcome

    def _event(self, msg: Msg) -> AuditEvent:
        if len(msg.data) > MAX_EVENT_BYTES:
            raise _Bad(BadReason.INVALID, f"event of {len(msg.data)} bytes")
        try:
            event = codec.decode(msg.data, AuditEvent)
        except WireError as e:
            raise _Bad(e.reason, str(e)) from e
        if event.kind != "auth-accepted":
            raise _Bad(BadReason.INVALID, f"a {event.kind!r} event on the accepted-login subject")
        try:
            expected = subjects.audit_event(event.kind, event.peer_id)
        except BadRequest as e:
            raise _Bad(BadReason.BAD_TOKEN, str(e)) from e
        if msg.subject != expected:
            raise _Bad(BadReason.BAD_TOKEN, f"peer {event.peer_id!r} does not match the subject")
        _clean(event.jwt_user, "user id")
        _clean(event.email, "email")
        _clean(event.name, "name")
        return event

    async def _apply(self, msg: Msg) -> Outcome:
        event = self._event(msg)
        if not event.jwt_user or event.method == "none":
            return Outcome.IGNORED  # machine identity: nobody to add
        if event.peer_id not in self._store.state.peers:
            self._log.info(
                "accepted-login event from a peer management does not know; ignored",
                extra={"peer": event.peer_id},
            )
            return Outcome.IGNORED
        at = msg.metadata.timestamp.timestamp()  # JetStream's clock, not the peer's
        created = False

        def change(current: UserRecord | None) -> UserRecord:
            nonlocal created
            created = current is None
            if current is not None and current.id != event.jwt_user:
                raise _Bad(BadReason.INVALID, "user key collision")  # a hash collision: leave it be
            return _seen(current, event, at)

        await self._store.mutate(self._store.users, user_key(event.jwt_user), change, wait=False)
        if created:
            self._log.info(
                "user added on first login",
                extra={"user": event.jwt_user, "peer": event.peer_id},
            )
            return Outcome.ADDED
        return Outcome.UPDATED
