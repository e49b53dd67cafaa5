"""A real SSH server standing in for a remote mesh peer (why not meshssh-sshd: conftest).

asyncssh on 127.0.0.2 (the loopback mesh), banner ``MeshSSH-0.1.0 MeshSSH-JWT-Required``,
password auth that accepts exactly the test's token (or ``none`` for a machine-identity peer),
real commands through ``/bin/sh`` (with a real PTY when one is requested: size, window changes
with SIGWINCH), env requests applied, signals delivered, exit status or exit signal returned,
SFTP (with an exit status, so ``scp`` exits 0), ``-L``/``-R``/``-D`` forwarding and agent
forwarding (``SSH_AUTH_SOCK`` in the command's environment). Each feature can be switched
off to see the client's refusal texts. It records who connected from where.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh

JWT_BANNER = "MeshSSH-0.1.0 MeshSSH-JWT-Required"
MACHINE_BANNER = "MeshSSH-0.1.0"


@dataclass
class PeerFeatures:
    jwt: bool = True
    sftp: bool = True
    local_forwarding: bool = True
    remote_forwarding: bool = True


@dataclass
class PeerRecord:
    sources: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)
    env: list[dict[str, str]] = field(default_factory=list)
    conns: list[asyncssh.SSHServerConnection] = field(default_factory=list)


class _Sftp(asyncssh.SFTPServer):
    def exit(self) -> None:
        # asyncssh closes the channel without an exit status; OpenSSH's scp then exits 1
        self.channel.exit(0)


class _Server(asyncssh.SSHServer):
    def __init__(
        self,
        token: str,
        features: PeerFeatures,
        record: PeerRecord,
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        self._token = token
        self._accept = accept
        self._features = features
        self._record = record

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._record.sources.append(conn.get_extra_info("peername")[0])
        self._record.conns.append(conn)

    def begin_auth(self, username: str) -> bool:
        self._record.users.append(username)
        return self._features.jwt

    def password_auth_supported(self) -> bool:
        return self._features.jwt

    def validate_password(self, username: str, password: str) -> bool:
        self._record.passwords.append(password)
        if self._accept is not None:
            return self._accept(password)
        return password == self._token

    def _local_forwarding(self) -> bool:
        if not self._features.local_forwarding:  # as OpenSSH's sshd refuses it
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "port forwarding is disabled"
            )
        return True

    def connection_requested(self, *args: object) -> bool:
        return self._local_forwarding()

    def unix_connection_requested(self, dest_path: str) -> bool:
        return self._local_forwarding()

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return self._features.remote_forwarding and listen_host in ("localhost", "127.0.0.1")


def _set_size(fd: int, size: tuple[int, int, int, int]) -> None:
    cols, rows, xpix, ypix = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpix, ypix))


class _Command:
    """One session's command: /bin/sh with pipes or a PTY, relayed to the SSH process."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], record: PeerRecord) -> None:
        self.process = process
        self.record = record
        self.master: int | None = None

    def environment(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "USER") if k in os.environ}
        given = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in self.process.env.items()
        }
        self.record.env.append(given)
        env.update(given)
        agent = self.process.channel.get_agent_path()
        if agent:
            env["SSH_AUTH_SOCK"] = agent
        if self.process.term_type:
            env["TERM"] = self.process.term_type
        return env

    async def run(self) -> None:
        command = self.process.command
        argv = ["/bin/sh", "-c", command] if command else ["/bin/sh", "-i"]
        if self.process.term_type:
            self.master, slave = pty.openpty()
            _set_size(slave, self.process.term_size)
            io: dict[str, int] = {"stdin": slave, "stdout": slave, "stderr": slave}
        else:
            sp = asyncio.subprocess.PIPE
            io = {"stdin": sp, "stdout": sp, "stderr": sp}
        proc = await asyncio.create_subprocess_exec(
            *argv, env=self.environment(), start_new_session=True, **io
        )
        if self.master is not None:
            os.close(slave)
        pump = asyncio.create_task(self._input(proc))
        try:
            if self.master is not None:
                await self._pty_output()
            else:
                assert proc.stdout is not None
                assert proc.stderr is not None
                await asyncio.gather(
                    self._copy(proc.stdout, self.process.stdout),
                    self._copy(proc.stderr, self.process.stderr),
                )
            status = await proc.wait()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if self.master is not None:
                os.close(self.master)
            # reap it and let its pipes close, even when the session was cut off
            async with asyncio.timeout(10):
                await asyncio.shield(proc.communicate())
        if status < 0:
            self.process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        else:
            self.process.exit(status)

    async def _copy(self, source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
        while data := await source.read(65536):
            sink.write(data)

    async def _pty_output(self) -> None:
        assert self.master is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            assert self.master is not None
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            if data:
                self.process.stdout.write(data)
            else:
                loop.remove_reader(self.master)
                if not done.done():
                    done.set_result(None)

        loop.add_reader(self.master, readable)
        await done

    async def _input(self, proc: asyncio.subprocess.Process) -> None:
        while True:
            try:
                data = await self.process.stdin.read(65536)
            except asyncssh.TerminalSizeChanged as e:
                if self.master is not None:
                    _set_size(self.master, (e.width, e.height, e.pixwidth, e.pixheight))
                    os.killpg(proc.pid, signal.SIGWINCH)
                continue
            except asyncssh.SignalReceived as e:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.Signals[f"SIG{e.signal}"])
                continue
            except asyncssh.BreakReceived:
                continue
            if not data:
                if proc.stdin is not None:
                    proc.stdin.close()
                return
            if self.master is not None:
                os.write(self.master, data)
            elif proc.stdin is not None:
                proc.stdin.write(data)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()


@dataclass
class MeshPeer:
    """A running peer server: where it listens and what it saw."""

    server: asyncssh.SSHAcceptor
    host_key_line: str
    token: str
    record: PeerRecord
    features: PeerFeatures

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection still open."""
        self.server.close()
        await self.server.wait_closed()
        for conn in self.record.conns:
            conn.close()
        async with asyncio.timeout(10):
            for conn in self.record.conns:
                await conn.wait_closed()


async def start_peer(
    token: str,
    *,
    features: PeerFeatures | None = None,
    host: str = "127.0.0.2",
    accept: Callable[[str], bool] | None = None,
) -> MeshPeer:
    """Start the peer server on ``host`` (port chosen by the OS).

    ``accept`` decides which passwords log in (default: exactly ``token``).
    """
    features = features or PeerFeatures()
    record = PeerRecord()
    key = asyncssh.generate_private_key("ssh-ed25519")

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        try:
            await _Command(process, record).run()
        except Exception as e:  # asyncssh would swallow it; make it visible to the test
            process.stderr.write(f"test peer error: {e!r}\n".encode())
            process.exit(254)

    server = await asyncssh.listen(
        host,
        0,
        server_factory=lambda: _Server(token, features, record, accept),
        server_host_keys=[key],
        server_version=JWT_BANNER if features.jwt else MACHINE_BANNER,
        process_factory=handle,
        sftp_factory=_Sftp if features.sftp else None,
        agent_forwarding=True,
        allow_pty=True,
        line_editor=False,
        encoding=None,
        x11_forwarding=False,
    )
    return MeshPeer(server, key.export_public_key().decode().strip(), token, record, features)
