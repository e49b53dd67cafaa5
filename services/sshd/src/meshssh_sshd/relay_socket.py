"""The relay's way in: a Unix socket where every connection starts with a PROXY v2 header.

The relay (proxy mode) accepts a client on ``<mesh-ip>:22`` and hands the connection to sshd
here, telling it the real client in a PROXY v2 header (SPEC §6, the relay hop). A header is
believed only on this socket and only from the relay's uid: the TCP port 22022 never reads
one, so a local user who connects there from the mesh address gets no say in the source.

The socket (``--relay-socket``) is made mode 0600 in a directory sshd makes (or tightens to)
0700, both owned by sshd's user. For each connection, before a single SSH byte:

1. the caller's uid (``SO_PEERCRED``) must be ``--relay-uid`` (default: sshd's own uid), else
   the connection is refused as ``untrusted_relay``;
2. exactly one PROXY v2 header is read (bounded by ``--proxy-header-timeout``): a missing,
   malformed or slow one refuses the connection (``bad_proxy_header``), a ``LOCAL`` one (a
   health check) is closed (``proxy_health_check``);
3. the header's source becomes the client and port 22 (``--relay-acl-port``) the port the
   ACL is checked on; the gate decides as for any connection (:meth:`Gate.admit`).

Refusals go through the gate's counting, audit and log (``connections_total{outcome}``).

Example::

    relay = RelaySocket(core, gate, Path("/var/lib/meshssh/sshd/relay.sock"))
    relay.open()
    tg.create_task(relay.run())
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from meshssh_common.errors import ConfigError
from meshssh_common.proxy_protocol import ProxyProtocolError, read_v2
from meshssh_common.unix_paths import reachable
from meshssh_sshd.gate import Gate, normal_ip
from meshssh_sshd.origin import Origin

if TYPE_CHECKING:
    from meshssh_sshd.core import SshdCore

__all__ = ["RelaySocket", "peer_uid"]

_BACKLOG = 512
_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """The connected peer's (pid, uid), from the kernel (``SO_PEERCRED``)."""
    pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid


def _private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) exist; ``path`` itself ours and 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError("--relay-socket", f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            "--relay-socket", f"{path} belongs to uid {info.st_uid}, not to sshd's user"
        )
    os.chmod(path, 0o700)


class RelaySocket:
    """The listening Unix socket and its checks (see the module docstring)."""

    def __init__(self, core: SshdCore, gate: Gate, path: Path) -> None:
        self._core = core
        self._gate = gate
        self.path = path
        configured = core.settings.relay_uid
        self.relay_uid = os.geteuid() if configured is None else configured
        self._sock: socket.socket | None = None

    def open(self) -> None:
        """Make the directory, replace a stale socket, bind (0600) and listen.

        Raises:
            ConfigError: the directory or the socket cannot be made as required.
        """
        try:
            _private_dir(self.path.parent)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(self.path.lstat().st_mode):
                    raise ConfigError("--relay-socket", f"{self.path} exists and is no socket")
                self.path.unlink()  # left by an earlier run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with reachable(self.path) as name:  # a long state dir path still works
                    sock.bind(name)  # inside a 0700 dir: nobody else can race the chmod
                os.chmod(self.path, 0o600)
                sock.listen(_BACKLOG)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise ConfigError("--relay-socket", f"cannot listen on {self.path}: {e}") from e
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        """Stop accepting and remove the socket file."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def run(self) -> None:
        """Accept until cancelled or closed."""
        loop = asyncio.get_running_loop()
        while self._sock is not None:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:
                if self._sock is None or e.errno == errno.EBADF:
                    return  # closed for shutdown
                self._core.log.warning("relay socket accept failed", extra={"error": str(e)})
                await asyncio.sleep(0.1)
                continue
            self._core.tasks.spawn(self._admit(conn), "admit-relayed")

    async def _admit(self, sock: socket.socket) -> None:
        settings = self._core.settings
        # Until the header is read, the connection is known only as "the relay socket".
        unknown = Origin("relay-socket", 0, "", 0, settings.relay_acl_port, via_relay=True)
        try:
            pid, uid = peer_uid(sock)
        except OSError as e:
            self._gate.refuse(sock, unknown, "untrusted_relay", f"no peer credentials: {e}")
            return
        if uid != self.relay_uid:
            self._gate.refuse(
                sock,
                unknown,
                "untrusted_relay",
                f"uid {uid} (pid {pid}) is not the relay's uid {self.relay_uid}",
            )
            return
        try:
            header = await read_v2(
                asyncio.get_running_loop(), sock, timeout=settings.proxy_header_timeout
            )
        except (ProxyProtocolError, OSError) as e:
            self._gate.refuse(sock, unknown, "bad_proxy_header", str(e) or repr(e))
            return
        if header.local or header.source is None or header.destination is None:
            self._gate.refuse(sock, unknown, "proxy_health_check", "PROXY LOCAL (health check)")
            return
        origin = Origin(
            normal_ip(header.source[0]),
            header.source[1],
            normal_ip(header.destination[0]),
            header.destination[1],
            settings.relay_acl_port,
            via_relay=True,
        )
        await self._gate.admit(sock, origin)
