"""Audit events to the durable ``MESHSSH_AUDIT`` JetStream stream (SPEC §8).

Recording never blocks an SSH session: :meth:`AuditLog.emit` queues the event (dropping it,
counted, when the bounded queue is full) and one publisher task sends it to
``meshssh.audit.v1.evt.<kind>.<peer>`` with a JetStream ack. sshd never creates the stream
(a peer's credentials may only publish its own audit subjects): policy does. While it is
missing, each publish fails, and is counted (``audit_events{result="failed"}``) and logged.

Example::

    audit = AuditLog(ctx.js, "p1", metrics, log)
    audit.emit("auth-accepted", local_user="alice", jwt_user="u-1", method="password")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from meshssh_common import codec, subjects
from meshssh_common.cancellation import raise_if_cancelling
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import AuditEvent, AuditKind
from meshssh_sshd.metrics import SshdMetrics

__all__ = ["AuditLog"]

_QUEUE_SIZE = 10_000


class AuditLog:
    """A non-blocking audit recorder for one peer."""

    def __init__(
        self, js: JetStreamContext, peer_id: str, metrics: SshdMetrics, log: BoundLogger
    ) -> None:
        self._js = js
        self._peer_id = peer_id
        self._metrics = metrics
        self._log = log
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(_QUEUE_SIZE)

    def emit(self, kind: AuditKind, **fields: Any) -> None:
        """Queue one event of ``kind``; the fields are those of :class:`AuditEvent`."""
        event = AuditEvent(kind=kind, peer_id=self._peer_id, at=time.time(), **fields)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.audit.labels(result="dropped").inc()
            self._log.warning("audit queue full; event dropped", extra={"kind": kind})

    async def run(self) -> None:
        """Publish queued events until cancelled."""
        while True:
            event = await self._queue.get()
            await self._publish(event)
            raise_if_cancelling()

    async def flush(self, timeout: float) -> None:
        """Publish what is still queued, for at most ``timeout`` seconds (at shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._queue.empty():
                    await self._publish(self._queue.get_nowait())

    async def _publish(self, event: AuditEvent) -> None:
        subject = subjects.audit_event(event.kind, self._peer_id)
        try:
            await self._js.publish(subject, codec.encode(event), timeout=2.0)
        except (nats.errors.Error, TimeoutError) as e:
            self._metrics.audit.labels(result="failed").inc()
            self._log.warning(
                "audit event not stored", extra={"kind": event.kind, "error": repr(e)}
            )
            return
        self._metrics.audit.labels(result="published").inc()
