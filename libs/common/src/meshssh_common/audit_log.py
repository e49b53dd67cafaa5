"""A peer's audit events to the durable ``MESHSSH_AUDIT`` JetStream stream (SPEC §8).

sshd audits its SSH sessions with it, the gateway its browser terminals. Recording never
blocks a session: :meth:`AuditLog.emit` queues the event (dropping it,
counted, when the bounded queue is full) and one publisher task sends it to
``meshssh.audit.v1.evt.<kind>.<peer>`` with a JetStream ack. A peer never creates the stream
(its credentials may only publish its own audit subjects): policy does.

A publish that JetStream does not acknowledge (no stream leader while a NATS node is down,
a reconnect, a missing stream) is retried until it is stored, ahead of the events queued
behind it (:func:`~meshssh_common.audit_stream.store_audit_event`, with a ``Nats-Msg-Id``
unique to this process; the service's ``audit_events{result="retried"}`` counter, handed in
as ``counter``, counts each retry). A refusal JetStream answers with drops the event
(``result="failed"``).

Example::

    audit = AuditLog(ctx.js, "p1", metrics.audit, log)
    audit.emit("auth-accepted", local_user="alice", jwt_user="u-1", method="password")
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
from prometheus_client import Counter

from meshssh_common import codec, subjects
from meshssh_common.audit_stream import store_audit_event
from meshssh_common.cancellation import raise_if_cancelling
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import AuditEvent, AuditKind

__all__ = ["AuditLog"]

_QUEUE_SIZE = 10_000


class AuditLog:
    """A non-blocking audit recorder for one peer."""

    def __init__(
        self, js: JetStreamContext, peer_id: str, counter: Counter, log: BoundLogger
    ) -> None:
        self._js = js
        self._peer_id = peer_id
        self._counter = counter  # labelled by result
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
            self._counter.labels(result="dropped").inc()
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
        streak: list[Exception] = []

        def retried(error: Exception) -> None:
            self._counter.labels(result="retried").inc()
            if not streak:  # once a streak
                self._log.warning(
                    "audit event not acknowledged; retrying",
                    extra={"kind": event.kind, "error": repr(error)},
                )
            streak.append(error)

        try:
            await store_audit_event(
                self._js,
                subject,
                codec.encode(event),
                msg_id=f"{self._boot}-{next(self._ids)}",
                on_retry=retried,
            )
        except nats.errors.Error as e:  # a refusal JetStream answered with
            self._counter.labels(result="failed").inc()
            self._log.warning(
                "audit event not stored", extra={"kind": event.kind, "error": repr(e)}
            )
            return
        self._counter.labels(result="published").inc()
