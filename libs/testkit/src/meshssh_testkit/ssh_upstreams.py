"""Real SSH servers for relay tests: a PROXY-aware asyncssh server and OpenSSH's ``sshd -i``.

:class:`ProxySshServer` reads the PROXY v2 header exactly as meshssh-sshd does (``read_v2`` on
the raw socket, only on its relay Unix socket; its TCP port never reads one), then serves SSH
on the same socket with asyncssh. Its exec handler prints the source it was told, so an
OpenSSH client's output proves which address the server saw. It stands in for meshssh-sshd
where a test is about the relay alone.

:class:`NativeSshd` is the "native SSH daemon" a relay hands connections to when meshssh SSH
is off: OpenSSH's own ``sshd`` in inetd mode, one process per connection, on a socket the
test owns (so the port is chosen by the OS).

Example::

    server = ProxySshServer("127.0.0.2", unix_path=tmp / "relay.sock", client_key=client.public_key)
    await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path

import asyncssh

from meshssh_common.proxy_protocol import ProxyHeader, ProxyProtocolError, read_v2

__all__ = ["NativeSshd", "ProxySshServer", "sshd_binary"]


def _listener(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ProxySshServer:
    """asyncssh behind a PROXY v2 reader (see the module docstring).

    Args:
        host: the address to listen on (port chosen by the OS).
        unix_path: the relay socket (like meshssh-sshd's ``--relay-socket``), if any.
        client_key: the OpenSSH public key line every user may log in with.
        sock: an already-bound listening socket to use instead (e.g. one made in a namespace).

    Like meshssh-sshd, a connection on ``unix_path`` must start with a PROXY header; a TCP
    connection is plain SSH and its TCP source is what the server reports (a PROXY header
    there is not SSH, so that handshake fails). Commands: ``sink`` reads stdin to
    the end and prints the byte count; ``true`` does nothing; anything else prints
    ``source=<ip> command=<command>``.
    """

    def __init__(
        self,
        host: str,
        *,
        unix_path: Path | None = None,
        client_key: str,
        sock: socket.socket | None = None,
    ) -> None:
        self.host = host
        self.unix_path = unix_path
        self._unix: socket.socket | None = None
        self.client_key = client_key
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.headers: list[ProxyHeader] = []
        self.refused: list[str] = []
        self.accepted = 0
        self.port = 0
        self._sock = sock
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def public_line(self) -> str:
        """The host key as an OpenSSH public key line."""
        return str(self.host_key.export_public_key().decode().strip())

    async def start(self) -> None:
        """Listen and start accepting."""
        if self._sock is None:
            self._sock = _listener(self.host)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        task = asyncio.create_task(self._accept_loop(self._sock, relayed=False))
        self._tasks.add(task)
        if self.unix_path is not None:
            self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._unix.bind(str(self.unix_path))
            self._unix.listen(128)
            self._unix.setblocking(False)
            task = asyncio.create_task(self._accept_loop(self._unix, relayed=True))
            self._tasks.add(task)

    async def _accept_loop(self, listener: socket.socket, *, relayed: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(listener)
            self.accepted += 1
            peer_ip = "relay" if relayed else str(peer[0])
            task = asyncio.create_task(self._serve(conn, peer_ip, relayed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, peer_ip: str, relayed: bool) -> None:
        loop = asyncio.get_running_loop()
        source = peer_ip
        if relayed:
            try:
                header = await read_v2(loop, conn, timeout=5)
            except ProxyProtocolError as e:
                self.refused.append(f"{peer_ip}: {e}")
                conn.close()
                return
            self.headers.append(header)
            source = header.source[0] if header.source else "?"

        async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
            if process.command == "sink":
                total = 0
                while data := await process.stdin.read(1 << 20):
                    total += len(data)
                process.stdout.write(f"{total}\n".encode())
            elif process.command != "true":
                process.stdout.write(f"source={source} command={process.command}\n".encode())
            process.exit(0)

        try:
            await asyncssh.run_server(
                conn,
                server_host_keys=[self.host_key],
                authorized_client_keys=asyncssh.import_authorized_keys(self.client_key + "\n"),
                process_factory=handle,
                encoding=None,
            )
            await asyncio.Future()  # keep the connection until stop() cancels it
        except (asyncssh.Error, OSError):
            conn.close()

    async def stop(self) -> None:
        """Stop accepting and drop every connection."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
        if self._unix is not None:
            self._unix.close()
            with contextlib.suppress(OSError):
                assert self.unix_path is not None
                self.unix_path.unlink()


def sshd_binary() -> str | None:
    """Path of OpenSSH's sshd, or None when openssh-server is not installed."""
    found = shutil.which("sshd")
    if found:
        return found
    return "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None


class NativeSshd:
    """OpenSSH's sshd in inetd mode (see the module docstring); needs root.

    Args:
        root: a directory for its config, host key, authorized keys and log.
        host: the address to listen on (port chosen by the OS).
        client_key: the OpenSSH public key line allowed to log in (as the current user).
    """

    def __init__(self, root: Path, host: str, *, client_key: str) -> None:
        self.root = root
        self.host = host
        self.client_key = client_key
        self.port = 0
        self.accepted = 0
        self.public_line = ""
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._procs: list[asyncio.subprocess.Process] = []

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        host_key = self.root / "ssh_host_ed25519_key"
        host_key.write_bytes(key.export_private_key())
        host_key.chmod(0o600)
        self.public_line = key.export_public_key().decode().strip()
        (self.root / "authorized_keys").write_text(self.client_key + "\n")
        (self.root / "sshd_config").write_text(
            f"HostKey {host_key}\nAuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            "UsePAM no\nStrictModes no\nPidFile none\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir

    async def start(self) -> None:
        """Write the config and host key, listen, and start accepting."""
        self._prepare()
        self._sock = _listener(self.host)
        self.port = self._sock.getsockname()[1]
        self._task = asyncio.create_task(self._accept_loop(self._sock))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sshd = sshd_binary() or "sshd"
        while True:
            conn, _ = await loop.sock_accept(listener)
            self.accepted += 1
            conn.setblocking(True)
            proc = await asyncio.create_subprocess_exec(
                sshd,
                "-i",
                "-f",
                str(self.root / "sshd_config"),
                "-E",
                str(self.root / "sshd.log"),
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                stderr=asyncio.subprocess.DEVNULL,
            )
            conn.close()
            self._procs.append(proc)

    async def stop(self) -> None:
        """Stop accepting and end every sshd process."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._sock is not None:
            self._sock.close()
