"""The gateway's audit events: ``browser-session-start`` and ``browser-session-end``.

Each browser terminal is audited by the target's sshd as any SSH session (its source peer is
the gateway); the gateway adds its own two events on its peer audit subject
``meshssh.audit.v1.evt.<kind>.<gateway peer id>``: the user (``jwt_user``, ``email``,
``name``), the target peer (``target_peer``), the local user, the browser's address, and at
the end the bytes each way, the duration and how it ended (``result``, ``reason``).

Auditing never blocks a terminal: :meth:`BrowserAudit.emit` queues (a full queue drops the
event, counted) and :meth:`BrowserAudit.run` stores each with a JetStream ack, retried through
an outage (:func:`~meshssh_common.audit_stream.store_audit_event`, unique ``Nats-Msg-Id``).
The gateway never creates the stream (policy does).

Example::

    audit = BrowserAudit(ctx.js, gateway_id, m, log)
    audit.emit("browser-session-start", jwt_user="alice", target_peer="p-1", local_user="alice")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from meshssh_common import codec, subjects
from meshssh_common.audit_stream import store_audit_event
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import AuditEvent, AuditKind
from meshssh_gateway.metrics import GatewayMetrics

__all__ = ["BrowserAudit"]

_QUEUE_SIZE = 10_000


class BrowserAudit:
    """A non-blocking audit recorder for one gateway peer."""

    def __init__(
        self, js: JetStreamContext, peer_id: str, m: GatewayMetrics, log: BoundLogger
    ) -> None:
        self._js = js
        self._peer_id = peer_id
        self._m = m
        self._log = log
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(_QUEUE_SIZE)
        self._ids = itertools.count(1)
        self._boot = f"{peer_id}-{os.getpid()}-{time.time_ns():x}"

    def emit(self, kind: AuditKind, **fields: Any) -> None:
        """Queue one event of ``kind``; the fields are those of :class:`AuditEvent`."""
        event = AuditEvent(kind=kind, peer_id=self._peer_id, at=time.time(), **fields)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._m.audit.labels(result="dropped").inc()
            self._log.warning("audit queue full; event dropped", extra={"kind": kind})

    async def run(self) -> None:
        """Store queued events until cancelled."""
        while True:
            await self._store(await self._queue.get())

    async def flush(self, timeout: float) -> None:
        """Store what is still queued, for at most ``timeout`` seconds (at shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._queue.empty():
                    await self._store(self._queue.get_nowait())

    async def _store(self, event: AuditEvent) -> None:
        def retried(error: Exception) -> None:
            self._m.audit.labels(result="retried").inc()
            self._log.warning(
                "audit event not acknowledged; retrying",
                extra={"kind": event.kind, "error": repr(error)},
            )

        try:
            await store_audit_event(
                self._js,
                subjects.audit_event(event.kind, self._peer_id),
                codec.encode(event),
                msg_id=f"{self._boot}-{next(self._ids)}",
                on_retry=retried,
            )
        except nats.errors.Error as e:  # a refusal JetStream answered with
            self._m.audit.labels(result="failed").inc()
            self._log.warning(
                "audit event not stored", extra={"kind": event.kind, "error": repr(e)}
            )
            return
        self._m.audit.labels(result="published").inc()
