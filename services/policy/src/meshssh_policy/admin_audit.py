"""Admin audit: every management write becomes an ``admin-change`` event in ``MESHSSH_AUDIT``.

REST writes are recorded by :class:`AuditWrites`, an ASGI middleware around the API, so no
route can forget it: one event per authenticated ``POST``/``PUT``/``PATCH``/``DELETE`` under
``/api/v1``, with the route template as ``action`` (``PATCH /api/v1/peers/{peer_id}``), its
path ids as ``targets``, the body's fields as ``detail`` (secrets left out, bounded), and the
HTTP status as ``result``. The dashboard records its writes with the same actions through
:meth:`AdminAudit.record`. The event is stored before the response is sent, so a client
that reads the log after its write sees the write. While JetStream does not answer (a NATS
node died, the stream elects a leader) the store is retried for up to ``_OUTAGE_S`` seconds
(:func:`~meshssh_common.audit_stream.store_audit_event`, deduplicated by ``Nats-Msg-Id``;
``result="retried"`` counts retries); a store that still fails is logged and counted
(``meshssh_policy_admin_audit_total{result="error"}``), never turned into a failed write.

``actor`` says who: ``token:sha256:<12 hex>`` (the admin token's fingerprint, as the logs
show it: never the token) or ``user:<id>`` for a dashboard sign-in.

Example::

    audit = AdminAudit(js, metrics, log)
    app.add_middleware(AuditWrites, audit=audit)
    await audit.record(actor="user:alice", action="PATCH /api/v1/peers/{peer_id}",
                       targets=(peer_id,), peer_id=peer_id, detail={"ssh_enabled": False})
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshssh_common import codec, subjects
from meshssh_common.audit_stream import store_audit_event
from meshssh_common.fingerprint import fingerprint
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.wire import AuditEvent

__all__ = ["SECRET_FIELDS", "WRITE_METHODS", "AdminAudit", "AuditWrites", "token_actor"]

_OUTAGE_S = 15.0  # how long a store rides out JetStream not answering (a leader election)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECRET_FIELDS = frozenset({"key", "password", "token", "secret"})
_MAX_DETAIL = 1024
_MAX_BODY = 64 * 1024


def token_actor(token: str) -> str:
    """``token:sha256:<12 hex>`` for a bearer token: its fingerprint as logs show it."""
    return "token:" + fingerprint(token)


def _detail(body: Any) -> str:
    if isinstance(body, Mapping):
        body = {k: ("<hidden>" if k in SECRET_FIELDS else v) for k, v in body.items()}
    elif body is None:
        return ""
    text = json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class AdminAudit:
    """Stores admin-change events in the audit stream."""

    def __init__(self, js: JetStreamContext, base: ServiceMetrics, log: BoundLogger) -> None:
        self._js = js
        self._log = log
        self._counter = base.counter(
            "admin_audit",
            "Admin-change audit events stored",
            ("result",),  # ok | retried | error
        )
        for result in ("ok", "retried", "error"):
            self._counter.labels(result=result)
        self._ids = itertools.count(1)
        self._boot = f"policy-{os.getpid()}-{time.time_ns():x}"

    async def record(
        self,
        *,
        actor: str,
        action: str,
        targets: tuple[str, ...] = (),
        peer_id: str = "",
        detail: Any = None,
        result: str = "200",
    ) -> None:
        """Store one event (a failure is logged and counted, never raised)."""
        event = AuditEvent(
            kind="admin-change",
            peer_id=peer_id,
            at=time.time(),
            actor=actor,
            action=action,
            targets=targets,
            detail=_detail(detail),
            result=result,
        )
        try:
            await store_audit_event(
                self._js,
                subjects.AUDIT_ADMIN,
                codec.encode(event),
                msg_id=f"{self._boot}-{next(self._ids)}",
                within=_OUTAGE_S,
                on_retry=lambda _: self._counter.labels(result="retried").inc(),
            )
        except (nats.errors.Error, TimeoutError) as e:
            self._counter.labels(result="error").inc()
            self._log.error(
                "admin change not audited",
                extra={"action": action, "actor": actor, "error": repr(e)},
            )
            return
        self._counter.labels(result="ok").inc()
        self._log.info(
            "admin change", extra={"action": action, "actor": actor, "targets": list(targets)}
        )


class AuditWrites:
    """ASGI middleware: audit every authenticated write under ``/api/v1``.

    The auth dependency puts the actor in ``scope["state"]["actor"]``; a request without one
    (refused before authentication) is not a write and is not recorded.
    """

    def __init__(self, app: ASGIApp, audit: AdminAudit) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; record it when it is a write under ``/api/v1``."""
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not scope["path"].startswith("/api/v1/")
        ):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        start: Message | None = None

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _MAX_BODY:
                body.extend(message.get("body", b"")[: _MAX_BODY - len(body)])
            return message

        async def sending(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message  # held back until the event is stored
                return
            if start is not None:
                held, start = start, None
                if not message.get("more_body", False):
                    await self._record(scope, bytes(body), int(held["status"]))
                await send(held)
            await send(message)

        await self.app(scope, receiving, sending)

    async def _record(self, scope: Scope, body: bytes, status: int) -> None:
        actor = scope.get("state", {}).get("actor")
        if not actor:
            return
        route = scope.get("route")
        template = getattr(route, "path", None) or scope["path"]
        params: dict[str, Any] = scope.get("path_params", {})
        targets = tuple(str(v) for v in params.values())
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = "<not JSON>"
        await self.audit.record(
            actor=actor,
            action=f"{scope['method']} {template}",
            targets=targets,
            peer_id=str(params.get("peer_id", "")),
            detail=parsed,
            result=str(status),
        )
