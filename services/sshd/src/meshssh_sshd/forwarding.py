"""Port forwarding: ``direct-tcpip`` (``-L``, ``-D``) and ``tcpip-forward`` (``-R``) (SPEC §7).

Each kind sits behind its flag; a refusal carries the SPEC §9 text and says which flag to set.
A forwarded connection is a :class:`Bridge` between a TCP transport and an SSH channel: flow
control both ways (a full side pauses the other), half-close (EOF travels on; the bridge
closes when both directions ended), byte counts, and one audit record when it opens and one
when it closes.

``--ssh-permit-open`` (OpenSSH ``PermitOpen``, :mod:`meshssh_common.permit_open`) limits where
``-L``/``-D`` may connect; a refusal says so (``open failed: administratively prohibited``),
is counted (``meshssh_sshd_permit_open_refusals_total``) and audited (``forward-refused``).

Remote listeners bind loopback only, whatever address the client asked for (OpenSSH's
``GatewayPorts no``), and announce connections under the address the client asked for, so the
client finds its forward. Port 0 lets the OS choose (the reply carries it); ports below 1024
only for an account with uid 0.

Example::

    fwd = Forwarding(core, record, account, log)
    session = fwd.open_direct("127.0.0.1", 8080, "127.0.0.1", 50000)   # coroutine
    listener = await fwd.open_remote(conn, "localhost", 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from meshssh_common.logs import BoundLogger
from meshssh_sshd.accounts import Account
from meshssh_sshd.sessions import LiveConnection

if TYPE_CHECKING:
    from meshssh_sshd.core import SshdCore

__all__ = [
    "LOCAL_REFUSED",
    "PERMIT_OPEN_REFUSED",
    "REMOTE_REFUSED",
    "Bridge",
    "Forwarding",
    "RemoteListener",
]

LOCAL_REFUSED = (
    "Port forwarding not available: local forwarding (-L, -D) is off on this peer; "
    "start the peer with --enable-ssh-local-port-forwarding"
)
REMOTE_REFUSED = (
    "Port forwarding not available: remote forwarding (-R) is off on this peer; "
    "start the peer with --enable-ssh-remote-port-forwarding"
)
PERMIT_OPEN_REFUSED = (
    "Port forwarding not available: {dest} is not allowed by this peer's --ssh-permit-open"
)
_CONNECT_TIMEOUT = 30.0
_LOOPBACK = {"127.0.0.1", "::1"}


class Bridge:
    """Both ends of one forwarded connection; ``on_close`` runs once, with the byte counts."""

    def __init__(self, on_close: Callable[[Bridge], None]) -> None:
        self.tcp: asyncio.Transport | None = None
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.tcp_eof = False
        self.chan_eof = False
        self.bytes_in = 0  # from the SSH client to the TCP side
        self.bytes_out = 0  # from the TCP side to the SSH client
        self.started = time.monotonic()
        self._on_close: Callable[[Bridge], None] | None = on_close

    def close(self) -> None:
        """Close both ends (idempotent)."""
        if self.tcp is not None:
            self.tcp.close()
        if self.chan is not None:
            self.chan.close()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback(self)


class _TcpSide(asyncio.Protocol):
    def __init__(self, bridge: Bridge, on_made: Callable[[], object] | None = None) -> None:
        self.b = bridge
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.b.tcp = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_made is not None:
            # The channel is not open yet: hold the bytes in the kernel until it is.
            transport.pause_reading()
            self._on_made()

    def data_received(self, data: bytes) -> None:
        if self.b.chan is not None:
            self.b.bytes_out += len(data)
            self.b.chan.write(data)

    def eof_received(self) -> bool:
        self.b.tcp_eof = True
        if self.b.chan is not None:
            self.b.chan.write_eof()
        if self.b.chan_eof:
            self.b.close()
            return False
        return True  # half-close: keep sending the other way

    def pause_writing(self) -> None:
        if self.b.chan is not None:
            self.b.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.b.chan is not None:
            self.b.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.b.close()


class _ChannelSide(asyncssh.SSHTCPSession[bytes]):
    def __init__(self, bridge: Bridge) -> None:
        self.b = bridge

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.b.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.b.tcp is not None:
            self.b.bytes_in += len(data)
            self.b.tcp.write(data)

    def eof_received(self) -> bool:
        self.b.chan_eof = True
        if self.b.tcp is not None and self.b.tcp.can_write_eof():
            self.b.tcp.write_eof()
        if self.b.tcp_eof:
            self.b.close()
            return False
        return True

    def pause_writing(self) -> None:
        if self.b.tcp is not None:
            self.b.tcp.pause_reading()

    def resume_writing(self) -> None:
        if self.b.tcp is not None:
            self.b.tcp.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.b.close()


class RemoteListener(asyncssh.SSHListener):
    """A ``-R`` listener: a loopback server that opens a forwarded channel per connection."""

    def __init__(self, server: asyncio.Server) -> None:
        super().__init__()
        self._server = server

    def get_port(self) -> int:
        """The port actually bound (the answer to a request for port 0)."""
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening (open forwarded connections stay up)."""
        self._server.close()

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
        await self._server.wait_closed()


class Forwarding:
    """The forwarding decisions and plumbing of one authenticated connection."""

    def __init__(
        self, core: SshdCore, record: LiveConnection, account: Account, log: BoundLogger
    ) -> None:
        self._core = core
        self._record = record
        self._account = account
        self._log = log
        self._permit = core.settings.permit_open

    def _audit_bridge(self, spec: str, kind: str) -> Callable[[Bridge], None]:
        core = self._core
        core.metrics.forwards.labels(kind=kind, result="opened").inc()
        core.audit.emit("forward-open", **self._audit_fields(), forward=spec)

        def closed(b: Bridge) -> None:
            core.metrics.bytes.labels(direction="in").inc(b.bytes_in)
            core.metrics.bytes.labels(direction="out").inc(b.bytes_out)
            core.audit.emit(
                "forward-close",
                **self._audit_fields(),
                forward=spec,
                duration=round(time.monotonic() - b.started, 3),
                bytes_in=b.bytes_in,
                bytes_out=b.bytes_out,
            )

        return closed

    def _audit_fields(self) -> dict[str, Any]:
        r = self._record
        return {
            "local_user": r.local_user,
            "jwt_user": r.jwt_user,
            "source_addr": r.origin.label,
            **r.origin.peer_fields(),
        }

    def open_direct(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """Decide on a ``direct-tcpip`` channel; returns what connects it.

        Raises:
            asyncssh.ChannelOpenError: local forwarding is off (the SPEC §9 text), or
                ``--ssh-permit-open`` does not allow the destination.
        """
        if not self._core.settings.enable_ssh_local_port_forwarding:
            self._core.metrics.forwards.labels(kind="local", result="refused").inc()
            self._log.info("local forward refused: flag off", extra={"dest": dest_host})
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, LOCAL_REFUSED
            )
        if not self._permit.allows(dest_host, dest_port):
            dest = f"{dest_host[:255]}:{dest_port}"
            self._core.metrics.forwards.labels(kind="local", result="refused").inc()
            self._core.metrics.permit_open_refusals.inc()
            self._core.audit.emit(
                "forward-refused",
                **self._audit_fields(),
                forward=f"L {dest}",
                reason="permit_open",
                result="refused",
            )
            self._log.info("local forward refused: --ssh-permit-open", extra={"dest": dest})
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, PERMIT_OPEN_REFUSED.format(dest=dest)
            )
        return self._connect(dest_host, dest_port)

    async def _connect(self, host: str, port: int) -> asyncssh.SSHTCPSession[bytes]:
        loop = asyncio.get_running_loop()
        spec = f"L {host}:{port}"
        bridge = Bridge(lambda b: None)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await loop.create_connection(lambda: _TcpSide(bridge), host, port)
        except (OSError, TimeoutError) as e:
            self._core.metrics.forwards.labels(kind="local", result="failed").inc()
            self._log.info(
                "local forward failed", extra={"dest": f"{host}:{port}", "error": str(e)}
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"connect to {host} port {port} failed: {e}"
            ) from None
        bridge._on_close = self._audit_bridge(spec, "local")
        return _ChannelSide(bridge)

    async def open_remote(
        self, conn: asyncssh.SSHServerConnection, listen_host: str, listen_port: int
    ) -> RemoteListener | bool:
        """Decide on a ``tcpip-forward`` request; a listener, or False (with a notice)."""
        metrics = self._core.metrics.forwards
        if not self._core.settings.enable_ssh_remote_port_forwarding:
            metrics.labels(kind="remote", result="refused").inc()
            self._record.notices.append(REMOTE_REFUSED)
            return False
        if 0 < listen_port < 1024 and self._account.uid != 0:
            metrics.labels(kind="remote", result="refused").inc()
            self._record.notices.append(
                f"Cannot bind to port {listen_port}: ports below 1024 need a root login "
                "on this peer; choose a port of 1024 or above"
            )
            return False
        bind = listen_host if listen_host in _LOOPBACK else "127.0.0.1"
        loop = asyncio.get_running_loop()

        def accepted() -> asyncio.Protocol:
            bridge = Bridge(lambda b: None)
            return _TcpSide(
                bridge,
                on_made=lambda: self._core.tasks.spawn(
                    self._open_forwarded(conn, bridge, listen_host, port_ref), "forward"
                ),
            )

        port_ref = [listen_port]
        try:
            server = await loop.create_server(accepted, bind, listen_port, reuse_address=True)
        except OSError as e:
            metrics.labels(kind="remote", result="failed").inc()
            self._record.notices.append(
                f"Cannot bind to port {listen_port}: {e.strerror or e}; choose another port"
            )
            return False
        listener = RemoteListener(server)
        port_ref[0] = listener.get_port()
        self._log.info("remote forward listening", extra={"port": port_ref[0], "bind": bind})
        return listener

    async def _open_forwarded(
        self,
        conn: asyncssh.SSHServerConnection,
        bridge: Bridge,
        listen_host: str,
        port_ref: list[int],
    ) -> None:
        # The TCP side stays paused until the channel is open, so no byte is lost meanwhile.
        tcp = bridge.tcp
        assert tcp is not None
        peer = tcp.get_extra_info("peername") or ("", 0)
        try:
            await conn.create_connection(
                lambda: _ChannelSide(bridge), listen_host, port_ref[0], str(peer[0]), int(peer[1])
            )
        except (asyncssh.Error, OSError) as e:
            self._core.metrics.forwards.labels(kind="remote", result="failed").inc()
            self._log.info("remote forward channel refused", extra={"error": str(e)})
            tcp.close()
            return
        bridge._on_close = self._audit_bridge(f"R {listen_host}:{port_ref[0]}", "remote")
        with contextlib.suppress(RuntimeError):
            tcp.resume_reading()
