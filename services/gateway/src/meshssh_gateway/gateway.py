"""The gateway process: register as a peer, then run on the service runner (issue 20).

Lifecycle of :func:`run_gateway`, in order:

1. create the state dir and register over REST (:class:`~meshssh_gateway.mesh_peer.MeshPeer`;
   retried while management does not answer, stopped by SIGTERM/SIGINT): the gateway has no
   bus identity before. The reply's JWT becomes ``<state-dir>/nats.creds``;
2. :func:`~meshssh_common.service.run_service` with that creds file: ``/healthz``,
   ``/readyz``, ``/metrics`` on ``--ops-listen``, NATS, then :meth:`Gateway.serve`;
3. ``serve`` follows the gateway's own map, renews the JWT at half-life, stores audit events,
   and serves ``/v1/terminal`` on ``--listen``; ready once the map is held and the socket
   listens (``/readyz`` adds ``map`` and ``registered``);
4. on SIGTERM/SIGINT: no new WebSockets (403), every open terminal gets
   ``{"type":"error","message":"the gateway is shutting down..."}`` and its close, the audit
   queue is flushed (bounded), the listener stops, NATS drains. Exit 0; 1 when registration
   was refused or the bus identity was lost; 2 on a bad setting.

Example::

    code = asyncio.run(run_gateway(settings, setup_key=key, log=log))
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import httpx

from meshssh_common.audit_log import AuditLog
from meshssh_common.errors import ConfigError, MeshError
from meshssh_common.http_server import HttpServer
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.service import ServiceContext, run_service, unless_stopped
from meshssh_common.tasks import TaskSet
from meshssh_gateway.mesh_peer import MeshPeer
from meshssh_gateway.metrics import GatewayMetrics
from meshssh_gateway.session_limits import SessionLimits
from meshssh_gateway.settings import GatewaySettings
from meshssh_gateway.terminal_endpoint import TerminalEndpoint, terminal_app

__all__ = ["Gateway", "run_gateway"]

_WS_MAX_FRAME = 1024 * 1024  # a paste larger than this is refused by the WebSocket layer


class Gateway:
    """The gateway's parts, built before NATS and wired in :meth:`serve`."""

    def __init__(self, settings: GatewaySettings, *, setup_key: str, log: BoundLogger) -> None:
        self.settings = settings
        self.log = log
        self.metrics = ServiceMetrics("gateway")
        self.m = GatewayMetrics(self.metrics)
        self.peer = MeshPeer(settings, setup_key=setup_key, log=log, metrics=self.metrics, m=self.m)
        self.limits = SessionLimits(
            per_user=settings.max_sessions_per_user, total=settings.max_sessions
        )
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.url = ""  # the WebSocket listener's http://host:port, once serving

    def readiness(self) -> dict[str, bool]:
        """The gateway's own ``/readyz`` checks (the runner adds ``nats`` and ``serving``)."""
        return {"registered": bool(self.peer.peer_id), "map": self.peer.maps.current is not None}

    async def serve(self, ctx: ServiceContext[GatewaySettings]) -> None:
        """The runner's body (see the module docstring, step 3 and 4)."""
        s = self.settings
        log = self.log.bind(peer=self.peer.peer_id)
        audit = AuditLog(ctx.js, self.peer.peer_id, self.m.audit, log)
        endpoint = TerminalEndpoint(
            s, self.peer, self.limits, audit, self.m, log, nc=lambda: ctx.nc
        )
        server = HttpServer(
            terminal_app(endpoint),
            s.listen,
            setting="--listen",
            ws="websockets-sansio",
            ws_max_size=_WS_MAX_FRAME,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            # No permessage-deflate: its compressor state costs ~300 KiB per terminal, and its
            # ratio on repetitive output would hide a slow browser from the back-pressure.
            ws_per_message_deflate=False,
            proxy_headers=bool(s.forwarded_allow_ips),
            forwarded_allow_ips=s.forwarded_allow_ips or None,
        )
        self.url = server.url
        tasks = TaskSet(log)
        tasks.spawn(self.peer.follow(ctx.nc), "map")
        tasks.spawn(audit.run(), "audit")
        tasks.spawn(self._keep_renewed(), "renewal")
        web = asyncio.create_task(server.serve())
        log.info(
            "websocket listening",
            extra={"url": server.url, "path": "/v1/terminal", "origins": list(s.allowed_origin)},
        )
        ctx.ready.set()
        try:
            await self.stop.wait()  # until cancelled, or the bus identity is lost
        finally:
            endpoint.stopping.set()  # every terminal sends its last frame and closes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    while self.limits.open:  # noqa: ASYNC110 (the terminals end themselves)
                        await asyncio.sleep(0.02)
            await audit.flush(timeout=1.0)
            server.stop()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(3.0):
                    await web
            await tasks.close(timeout=1.0)

    async def _keep_renewed(self) -> None:
        reason = await self.peer.keep_renewed()
        self.log.error("bus identity lost; stopping", extra={"reason": reason})
        sys.stderr.write(f"meshssh-gateway: {reason}\n")
        self.exit_code = 1
        self.stop.set()

    async def register_until_stopped(self, http: httpx.AsyncClient) -> bool:
        """Register, or stop on a signal; True once registered.

        Raises:
            ConfigError: no management URL, or no credential and no setup key.
            MeshError: management refused the gateway.
        """
        login = await unless_stopped(self.peer.register(http), self.stop)
        if login is None:
            return False
        login.result()
        return True


async def run_gateway(settings: GatewaySettings, *, setup_key: str, log: BoundLogger) -> int:
    """Run the gateway until a signal; returns the exit code (see the module docstring)."""
    gateway = Gateway(settings, setup_key=setup_key, log=log)
    async with httpx.AsyncClient() as http:
        try:
            gateway.peer.prepare()
            if not await gateway.register_until_stopped(http):
                return 0
        except ConfigError as e:
            log.error("bad setting", extra={"error": str(e)})
            sys.stderr.write(f"meshssh-gateway: bad setting {e}\n")
            return 2
        except MeshError as e:
            log.error("registration refused", extra={"error": str(e)})
            sys.stderr.write(f"meshssh-gateway: registration refused: {e.public}\n")
            return 1
        settings = settings.model_copy(update={"nats_creds": gateway.peer.identity.creds_path})
        code = await run_service(
            "gateway",
            settings,
            gateway.serve,
            metrics=gateway.metrics,
            stop=gateway.stop,
            checks=gateway.readiness,
        )
    return code or gateway.exit_code
