"""``/v1/terminal``: the browsers' WebSocket endpoint, from the handshake to the last frame.

Order of one connection (DESIGN steps 2 to 4), each refusal counted in ``refusals_total``:

1. before the upgrade, with HTTP 403 and no WebSocket: an ``Origin`` not in
   ``--allowed-origin`` (``origin``), no ``ticket`` in the query (``no_ticket``), or a gateway
   that is full or not on the bus yet (``limit_gateway``, ``unreachable``);
2. the upgrade; from here every refusal is one ``{"type":"error","message":...}`` frame and
   the close, so the terminal page can show why;
3. the ticket is redeemed at policy with the dashboard session cookie that came with the
   request (``ticket``); the grant's peer must be in the gateway's own map (``target``);
4. a slot per user and per gateway (``limit_user``, ``limit_gateway``);
5. the user's IdP token is exchanged at authn for a per-peer token naming that target only
   (``token``); the gateway never asks for any other;
6. SSH login to the target's sshd as the granted local user (``ssh_denied`` with sshd's text,
   ``unreachable``), PTY at the size in the query (``cols``, ``rows``; 80x24 without), shell;
7. :class:`~meshssh_gateway.terminal.Terminal` bridges until the end; audited
   (``browser-session-start`` / ``-end``) and counted by result.

The browser's address is the TCP peer, or what a trusted proxy put in ``X-Forwarded-For``
(``--forwarded-allow-ips``).

Example::

    endpoint = TerminalEndpoint(settings, peer, limits, audit, m, log, nc=lambda: ctx.nc)
    app = terminal_app(endpoint)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncssh
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from meshssh_common.audit_log import AuditLog
from meshssh_common.errors import Denied, MeshError, Unavailable
from meshssh_common.logs import BoundLogger
from meshssh_common.token_exchange import exchange_token
from meshssh_common.wire import RemotePeer, TicketGrant
from meshssh_gateway.mesh_peer import MeshPeer
from meshssh_gateway.metrics import GatewayMetrics, Refusal, SessionResult
from meshssh_gateway.session_limits import LimitReached, SessionLimits
from meshssh_gateway.settings import GatewaySettings
from meshssh_gateway.ssh_target import HostKeyMismatch, dial_target
from meshssh_gateway.terminal import Terminal, error_frame
from meshssh_gateway.tickets import redeem

__all__ = ["PATH", "SESSION_COOKIE", "TerminalEndpoint", "terminal_app"]

PATH = "/v1/terminal"
SESSION_COOKIE = "meshssh_session"  # policy's dashboard session cookie


class _Refused(Exception):
    """A refusal after the upgrade: ``public`` goes to the browser."""

    def __init__(self, reason: Refusal, public: str, detail: str = "") -> None:
        super().__init__(detail or public)
        self.reason = reason
        self.public = public


class TerminalEndpoint:
    """Serves ``/v1/terminal`` (see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        peer: MeshPeer,
        limits: SessionLimits,
        audit: AuditLog,
        m: GatewayMetrics,
        log: BoundLogger,
        *,
        nc: Callable[[], NATS | None],
    ) -> None:
        self.settings = settings
        self.peer = peer
        self.limits = limits
        self.audit = audit
        self.m = m
        self.log = log
        self._nc = nc
        self.stopping = asyncio.Event()  # set at shutdown: every terminal ends

    async def handle(self, ws: WebSocket) -> None:
        """One WebSocket, from the handshake to the close."""
        browser = ws.client.host if ws.client else ""
        origin = ws.headers.get("origin", "")
        ticket = ws.query_params.get("ticket", "")
        nc = self._nc()
        denial = ""
        if origin.lower() not in self.settings.allowed_origin:
            denial, reason = f"origin {origin or '(none)'} is not allowed", Refusal.ORIGIN
        elif not ticket:
            denial, reason = "no ticket", Refusal.NO_TICKET
        elif self.limits.full():
            denial, reason = "the gateway is full", Refusal.LIMIT_GATEWAY
        elif nc is None or not nc.is_connected or self.stopping.is_set():
            denial, reason = "the gateway is not connected", Refusal.UNREACHABLE
        if denial:
            self.m.refusals.labels(reason=reason).inc()
            self.log.info(
                "websocket refused before the upgrade",
                extra={"reason": reason.value, "origin": origin[:200], "browser": browser},
            )
            await ws.send_denial_response(PlainTextResponse(denial + "\n", status_code=403))
            return
        assert nc is not None
        await ws.accept()
        try:
            await self._session(ws, nc, ticket, browser)
        except _Refused as e:
            self.m.refusals.labels(reason=e.reason).inc()
            self.log.info(
                "terminal refused",
                extra={"reason": e.reason.value, "error": str(e), "browser": browser},
            )
            await _last_word(ws, error_frame(e.public), 1008)
        except Exception:
            self.log.exception("terminal failed", extra={"browser": browser})
            await _last_word(ws, error_frame("the gateway failed; try again"), 1011)

    async def _session(self, ws: WebSocket, nc: NATS, ticket: str, browser: str) -> None:
        started = time.monotonic()
        cookie = ws.cookies.get(SESSION_COOKIE, "")
        grant = await self._redeem(nc, ticket, cookie, browser)
        remote = self.peer.target(grant.peer_id)
        if remote is None:
            raise _Refused(
                Refusal.TARGET,
                f"the gateway may not reach {grant.peer_name or grant.peer_id} "
                "(no policy lets the gateway's group reach it)",
            )
        try:
            with self.limits.take(grant.sub):
                await self._login_and_run(ws, nc, grant, remote, browser, started)
        except LimitReached as e:
            reason = Refusal.LIMIT_USER if e.per_user else Refusal.LIMIT_GATEWAY
            raise _Refused(reason, e.public) from e

    async def _redeem(self, nc: NATS, ticket: str, cookie: str, browser: str) -> TicketGrant:
        try:
            return await redeem(
                nc, self.peer.peer_id, ticket, cookie, browser,
                timeout=self.settings.connect_timeout,
            )  # fmt: skip
        except Denied as e:
            raise _Refused(Refusal.TICKET, e.public, str(e)) from e
        except MeshError as e:
            raise _Refused(
                Refusal.UNREACHABLE, "the management plane did not answer; try again", str(e)
            ) from e

    async def _login_and_run(
        self,
        ws: WebSocket,
        nc: NATS,
        grant: TicketGrant,
        remote: RemotePeer,
        browser: str,
        started: float,
    ) -> None:
        s = self.settings
        try:
            exchanged = await exchange_token(
                nc, self.peer.peer_id, grant.idp_token, remote.id, timeout=s.connect_timeout
            )
        except Denied as e:
            raise _Refused(Refusal.TOKEN, e.public, str(e)) from e
        except MeshError as e:
            raise _Refused(
                Refusal.UNREACHABLE, "authn did not issue a login token; try again", str(e)
            ) from e
        port = remote.ssh_port or grant.ssh_port
        try:
            conn, watch = await dial_target(
                remote,
                port,
                grant.local_user,
                exchanged.access_token,
                source=s.mesh_ip,
                timeout=s.connect_timeout,
            )
        except HostKeyMismatch as e:
            raise _Refused(Refusal.TARGET, e.public, str(e)) from e
        except Denied as e:
            raise _Refused(Refusal.SSH_DENIED, e.public, str(e)) from e
        except Unavailable as e:
            raise _Refused(
                Refusal.UNREACHABLE, f"cannot reach {remote.name} over the mesh", str(e)
            ) from e
        self.m.setup_seconds.observe(time.monotonic() - started)
        who = {
            "jwt_user": grant.sub,
            "email": grant.email,
            "name": grant.name,
            "target_peer": remote.id,
            "local_user": grant.local_user,
            "browser_addr": browser,
            "source_addr": browser,
        }
        log = self.log.bind(user=grant.sub, target=remote.id, local_user=grant.local_user)
        log.info("terminal open", extra={"browser": browser, "peer_name": remote.name})
        self.audit.emit("browser-session-start", **who)
        self.m.sessions_open.inc()
        terminal = Terminal(
            ws, idle_timeout=s.idle_timeout, send_buffer=s.send_buffer, m=self.m, log=log
        )
        result, status, message = SessionResult.CLOSED, None, ""
        try:
            async with conn:
                outcome = await terminal.run(
                    conn,
                    watch,
                    cols=_size(ws, "cols", 80),
                    rows=_size(ws, "rows", 24),
                    stop=self.stopping,
                )
            result, status, message = outcome.result, outcome.status, outcome.message
        except (asyncssh.Error, OSError) as e:  # e.g. sshd refused the PTY session
            message = f"the session on {remote.name} failed: {e}"
            await _last_word(ws, error_frame(message), 1011)
        finally:
            self.m.sessions_open.dec()
            self.m.sessions.labels(result=result).inc()
            duration = time.monotonic() - started
            self.audit.emit(
                "browser-session-end",
                **who,
                result=result.value,
                reason=message[:200] if status is None else f"exit {status}",
                duration=round(duration, 3),
                bytes_in=terminal.bytes_in,
                bytes_out=terminal.bytes_out,
            )
            log.info(
                "terminal closed",
                extra={"result": result.value, "status": status, "duration": round(duration, 3)},
            )


async def _last_word(ws: WebSocket, frame: str, code: int) -> None:
    """Send the last frame and close, bounded (a browser that stopped reading gets neither)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await ws.send_text(frame)
            await ws.close(code)


def _size(ws: WebSocket, name: str, default: int) -> int:
    text = ws.query_params.get(name, "")
    if text.isdigit() and 1 <= int(text) <= 1000:
        return int(text)
    return default


async def _not_found(_request: object) -> PlainTextResponse:
    return PlainTextResponse("meshssh-gateway: WebSocket endpoint is /v1/terminal\n", 404)


def terminal_app(endpoint: TerminalEndpoint) -> Starlette:
    """The gateway's ASGI app: ``/v1/terminal`` and a plain answer elsewhere."""
    return Starlette(
        routes=[WebSocketRoute(PATH, endpoint.handle), Route("/", _not_found)],
    )
