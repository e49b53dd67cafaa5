"""``meshssh ssh proxy HOST PORT``: the ProxyCommand that bridges OpenSSH to a mesh peer.

OpenSSH's session ends here, locally, on stdin/stdout: the proxy is an SSH server with a
throw-away Ed25519 host key (OpenSSH's own host-key check is off for mesh peers in the
drop-in, because it only ever talks to this local process). When OpenSSH starts to
authenticate, the proxy dials the real peer (:mod:`meshssh_cli.ssh.conn`: from this peer's
mesh address, host key pinned, JWT as password), so a refusal there becomes a refused login
here, with the reason on stderr. Then every channel type is bridged (NetBird's proxy dropped
several of these):

- sessions: shell, exec, PTY, window changes, env, signals, exit status/signal, subsystems
  (``sftp``, so ``scp`` and ``sftp`` work) and agent forwarding (``-A``):
  :mod:`meshssh_cli.proxy.session`;
- ``direct-tcpip`` (``-L``, ``-D``) and ``direct-streamlocal`` (``-L`` to a socket path);
- ``tcpip-forward`` / ``forwarded-tcpip`` (``-R``, port 0 included) and the streamlocal twin.

Throughput (``bench/client.py``): the hop to OpenSSH offers AES-GCM only, the stdio pipes are
widened to 1 MiB, and relayed data is written in batches. An ``ssh_config`` whose ``Ciphers``
excludes AES-GCM cannot use the proxy.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Coroutine
from typing import Any, cast

import asyncssh
from asyncssh.forward import SSHForwarder

from meshssh_agent.peers import PeerEntry
from meshssh_cli.proxy.session import SessionBridge
from meshssh_cli.proxy.stdio import StdioTunnel, stdio_usable
from meshssh_cli.ssh import errors as client_errors
from meshssh_cli.ssh.conn import dial, resolve
from meshssh_cli.ssh.errors import ClientError
from meshssh_cli.ssh.peer_directory import ClientLink
from meshssh_common import ssh_packets
from meshssh_common.logs import service_logger
from meshssh_common.tasks import TaskSet

__all__ = ["PROXY_VERSION", "ProxyServer", "run_proxy"]

PROXY_VERSION = "MeshSSH-Proxy-0.1.0"
# The hop to OpenSSH is a local pipe: AES-GCM only (OpenSSH would pick ChaCha20-Poly1305,
# which costs asyncssh three cipher calls per packet instead of one).
_LOCAL_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]


def _report(error: ClientError) -> None:
    sys.stderr.write(f"meshssh: {error.render()}\n")
    sys.stderr.flush()


class ProxyServer(asyncssh.SSHServer):
    """One OpenSSH connection at the proxy and its one connection to the peer.

    Fields are set by the hooks named in their comments.
    """

    def __init__(self, link: ClientLink, peer: PeerEntry, port: int, source: str) -> None:
        self.peer_name = peer.name
        self.username = ""  # begin_auth
        self._link = link
        self._peer = peer
        self._port = port
        self._source = source
        self._conn: asyncssh.SSHServerConnection | None = None  # connection_made
        self._backend: asyncssh.SSHClientConnection | None = None  # begin_auth
        self._agent_on = False  # enable_agent_forwarding
        self._client_gone = False  # connection_lost
        self._tasks = TaskSet(service_logger("proxy"))  # spawn
        self.failure: ClientError | None = None  # begin_auth, backend_lost

    # asyncssh hooks

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """OpenSSH connected (the SSH handshake starts)."""
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        """OpenSSH went away: stop everything, close the peer connection."""
        self._client_gone = True
        self._tasks.cancel()
        if self._backend is not None:
            self._backend.close()

    async def begin_auth(self, username: str) -> bool:
        """Dial the peer as ``username``; no login at the proxy when that succeeds."""
        self.username = username
        try:
            self._backend = await dial(
                self._peer,
                self._port,
                username,
                self._link,
                source=self._source,
                on_lost=self.peer_lost,
            )
        except ClientError as e:
            self.failure = e
            _report(e)
            assert self._conn is not None
            self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, e.headline)
            return True
        return False

    def session_requested(self) -> SessionBridge:
        """OpenSSH opens a session channel: bridge it."""
        return SessionBridge(self)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """A ``direct-tcpip`` channel (``-L``, ``-D``): a coroutine opens it on the peer."""
        return self._direct(dest_host, dest_port, orig_host, orig_port)

    def unix_connection_requested(self, dest_path: str) -> Any:
        """A ``direct-streamlocal`` channel (``-L`` to a socket path)."""
        return self._direct_unix(dest_path)

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        """A ``tcpip-forward`` request (``-R``): a coroutine listens on the peer."""
        return self._remote_listen(listen_host, listen_port)

    def unix_server_requested(self, listen_path: str) -> Any:
        """A ``streamlocal-forward`` request (``-R`` on a socket path)."""
        return self._remote_listen_unix(listen_path)

    # SessionHub

    def backend(self) -> asyncssh.SSHClientConnection:
        """The authenticated connection to the peer."""
        assert self._backend is not None
        return self._backend

    def agent_path(self) -> str | None:
        """OpenSSH's forwarded agent at the proxy (set once OpenSSH sent auth-agent-req)."""
        assert self._conn is not None
        return self._conn.get_agent_path()

    def enable_agent_forwarding(self, path: str) -> None:
        """Request agent forwarding on the peer's sessions, served by OpenSSH's agent.

        asyncssh fixes a client connection's agent path when it connects, but the proxy
        connects before it knows whether OpenSSH forwards an agent (that arrives with the
        first session). asyncssh reads the path on each new session and on each agent
        channel the peer opens, so setting it here is enough; pinned asyncssh 2.24.
        """
        if not self._agent_on:
            self._agent_on = True
            self.backend()._agent_forward_path = path

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task owned by this connection (cancelled when it closes)."""
        self._tasks.spawn(coro, "channel")

    def report(self, error: ClientError) -> None:
        """Show a failure on stderr (OpenSSH passes the ProxyCommand's stderr through)."""
        _report(error)

    # bridges

    def peer_lost(self, exc: Exception | None) -> None:
        """The peer's connection ended while OpenSSH's is still up: say so, end OpenSSH's.

        Called by a session bridge as soon as its channel dies with the connection, and
        again when the connection itself reports the loss; the first call wins.
        """
        if self._conn is None or self._backend is None or self._client_gone or self.failure:
            return
        detail = f"{self.peer_name} closed the connection"
        if exc is not None:
            detail += f": {getattr(exc, 'reason', '') or exc}"
        self.failure = ClientError(
            "Connection closed",
            detail,
            "whether your access was revoked (meshssh status); a peer closes the sessions "
            "that a policy change no longer allows.",
        )
        _report(self.failure)
        self._conn.disconnect(
            asyncssh.DISC_BY_APPLICATION, f"{self.peer_name} closed the connection"
        )

    async def _direct(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> SSHForwarder:
        target = f"{dest_host}:{dest_port}"
        try:
            _, upstream = await self.backend().create_connection(
                cast(Any, SSHForwarder), dest_host, dest_port, orig_host, orig_port
            )
        except asyncssh.ChannelOpenError as e:
            self._refused_forward(target, e)
            raise
        return SSHForwarder(cast(SSHForwarder, upstream))

    async def _direct_unix(self, dest_path: str) -> SSHForwarder:
        try:
            _, upstream = await self.backend().create_unix_connection(
                cast(Any, SSHForwarder), dest_path
            )
        except asyncssh.ChannelOpenError as e:
            self._refused_forward(dest_path, e)
            raise
        return SSHForwarder(cast(SSHForwarder, upstream))

    def _refused_forward(self, target: str, e: asyncssh.ChannelOpenError) -> None:
        if e.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            self.report(client_errors.port_forwarding_unavailable(self.peer_name, target, e.reason))
        else:
            sys.stderr.write(
                f"meshssh: {self.peer_name} could not connect to {target}: {e.reason}\n"
            )

    async def _remote_listen(self, listen_host: str, listen_port: int) -> Any:
        allocated: list[int] = []

        def forwarded(orig_host: str, orig_port: int) -> Coroutine[Any, Any, SSHForwarder]:
            return self._forwarded(listen_host, allocated[0], orig_host, orig_port)

        try:
            listener = await self.backend().create_server(
                cast(Any, forwarded), listen_host, listen_port
            )
        except (asyncssh.ChannelListenError, asyncssh.Error) as e:
            where = f"{self.peer_name} ({listen_host or '*'})"
            self.report(client_errors.cannot_bind(where, listen_port, str(e) or "refused"))
            return False
        allocated.append(listener.get_port())
        return listener

    async def _forwarded(
        self, listen_host: str, listen_port: int, orig_host: str, orig_port: int
    ) -> SSHForwarder:
        assert self._conn is not None
        _, downstream = await self._conn.create_connection(
            cast(Any, SSHForwarder), listen_host, listen_port, orig_host, orig_port
        )
        return SSHForwarder(cast(SSHForwarder, downstream))

    async def _remote_listen_unix(self, listen_path: str) -> Any:
        def forwarded() -> Coroutine[Any, Any, SSHForwarder]:
            return self._forwarded_unix(listen_path)

        try:
            return await self.backend().create_unix_server(cast(Any, forwarded), listen_path)
        except (asyncssh.ChannelListenError, asyncssh.Error) as e:
            self.report(
                client_errors.port_forwarding_unavailable(self.peer_name, listen_path, str(e))
            )
            return False

    async def _forwarded_unix(self, listen_path: str) -> SSHForwarder:
        assert self._conn is not None
        _, downstream = await self._conn.create_unix_connection(
            cast(Any, SSHForwarder), listen_path
        )
        return SSHForwarder(cast(SSHForwarder, downstream))


async def run_proxy(
    link: ClientLink, host: str, port: int, *, stdin: int = 0, stdout: int = 1
) -> int:
    """Serve one OpenSSH connection on ``stdin``/``stdout`` until it ends.

    Returns:
        0 when the connection ran and ended; 255 when it failed before that (the reason is on
        stderr).
    """
    if not stdio_usable(stdin, stdout):
        _report(
            ClientError(
                "Unsupported use",
                "meshssh ssh proxy talks SSH on stdin/stdout, which must be pipes or sockets",
                "your ssh_config: it is meant as `ProxyCommand meshssh ssh proxy %h %p` "
                "(meshssh config install writes it).",
            )
        )
        return 2
    try:
        peer = await resolve(link, host)
        source = await link.local_mesh_ip()
    except ClientError as e:
        _report(e)
        return e.exit_code
    ssh_packets.install()  # asyncssh's leaner packet path, on both hops (bench/scp_throughput.py)
    server = ProxyServer(link, peer, port, source)
    tunnel = StdioTunnel(stdin, stdout)
    try:
        conn = await asyncssh.connect_reverse(
            "stdio",
            0,
            tunnel=tunnel,
            config=None,
            server_factory=lambda: server,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            server_version=PROXY_VERSION,
            agent_forwarding=True,
            allow_pty=True,
            line_editor=False,
            x11_forwarding=False,
            encoding=None,
            login_timeout=0,
            connect_timeout=None,
            encryption_algs=_LOCAL_CIPHERS,
            max_pktsize=ssh_packets.MAX_PACKET,
        )
    except (asyncssh.Error, OSError):
        tunnel.close()
        return server.failure.exit_code if server.failure else 255
    with contextlib.suppress(asyncssh.Error, OSError):
        await conn.wait_closed()
    tunnel.close()
    return 0
