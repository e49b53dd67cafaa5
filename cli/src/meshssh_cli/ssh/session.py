"""``meshssh ssh`` itself: dial the peer, set up ``-L``/``-R``, run the command or a terminal.

With ``-A`` the session gets your agent (``$SSH_AUTH_SOCK``) forwarded; a peer that does not
allow it says "Agent forwarding not available" on stderr and the session still runs.

The exit status is the remote command's (255 when the connection failed or the command died
of a signal, as with OpenSSH). A terminal is requested for an interactive login from a
terminal, with ``-t`` when stdin is a terminal, and always with ``-tt``; then the local
terminal is in raw mode and resizes are relayed. Without a terminal, Ctrl-C sends ``INT`` to
the remote command and ends the session (exit 130).

Local input is read from fd 0 only when the peer's window has room (flow control); output is
written to fd 1 and fd 2 as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import stat
import sys
from collections.abc import Callable

import asyncssh

from meshssh_cli.ssh import errors as client_errors
from meshssh_cli.ssh import terminal
from meshssh_cli.ssh.args import SshArgs
from meshssh_cli.ssh.conn import dial, resolve
from meshssh_cli.ssh.forward_spec import ForwardSpec
from meshssh_cli.ssh.peer_directory import ClientLink
from meshssh_common import ssh_packets

__all__ = ["run_ssh"]

_CHUNK = 65536
_SEND_ENV = ["LANG", "LANGUAGE", "LC_*", "COLORTERM", "TZ"]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


class _Output(asyncssh.SSHClientSession[bytes]):
    """Writes the peer's output to fd 1/2 and remembers when the session ended."""

    def __init__(
        self, closed: asyncio.Future[None], pause: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self._closed = closed
        self._pause = pause
        self._resume = resume

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        _write_all(2 if datatype == asyncssh.EXTENDED_DATA_STDERR else 1, data)

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        self._resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


def _pollable(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """False for what epoll refuses (regular files, ``/dev/null``): those are read directly."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return False
    try:
        loop.add_reader(fd, lambda: None)
    except PermissionError:
        return False
    loop.remove_reader(fd)
    return True


class _Input:
    """Pumps fd 0 into the channel while the peer's window has room."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int = 0) -> None:
        self._loop = loop
        self._fd = fd
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._watching = False
        self._done = False
        self._pollable = _pollable(loop, fd)
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    def start(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan
        if self._pollable:
            self.resume()
        else:
            self._task = self._loop.create_task(self._read_file())

    def pause(self) -> None:
        self._room.clear()
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def resume(self) -> None:
        self._room.set()
        if self._pollable and self._chan is not None and not self._done and not self._watching:
            self._loop.add_reader(self._fd, self._readable)
            self._watching = True

    def stop(self) -> None:
        self._done = True
        self.pause()
        if self._task is not None:
            self._task.cancel()

    def _deliver(self, data: bytes) -> None:
        assert self._chan is not None
        if self._chan.is_closing():
            self.stop()
        elif data:
            self._chan.write(data)
        else:
            self.stop()
            self._chan.write_eof()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._deliver(data)

    async def _read_file(self) -> None:
        while not self._done:
            await self._room.wait()
            self._deliver(os.read(self._fd, _CHUNK))
            await asyncio.sleep(0)


async def _forward(conn: asyncssh.SSHClientConnection, spec: ForwardSpec, remote: bool) -> None:
    host = spec.bind_host()
    try:
        if not remote:
            if spec.listen_path is not None:
                if spec.connect_path is not None:
                    await conn.forward_local_path(spec.listen_path, spec.connect_path)
                else:
                    await conn.forward_local_path_to_port(
                        spec.listen_path, spec.connect_host or "", spec.connect_port or 0
                    )
            elif spec.connect_path is not None:
                await conn.forward_local_port_to_path(
                    host, spec.listen_port or 0, spec.connect_path
                )
            else:
                await conn.forward_local_port(
                    host, spec.listen_port or 0, spec.connect_host or "", spec.connect_port or 0
                )
            return
        if spec.listen_path is not None:
            if spec.connect_path is not None:
                await conn.forward_remote_path(spec.listen_path, spec.connect_path)
            else:
                await conn.forward_remote_path_to_port(
                    spec.listen_path, spec.connect_host or "", spec.connect_port or 0
                )
            return
        if spec.connect_path is not None:
            listener = await conn.forward_remote_port_to_path(
                host, spec.listen_port or 0, spec.connect_path
            )
        else:
            listener = await conn.forward_remote_port(
                host, spec.listen_port or 0, spec.connect_host or "", spec.connect_port or 0
            )
        if spec.listen_port == 0:
            target = spec.connect_path or f"{spec.connect_host}:{spec.connect_port}"
            sys.stderr.write(
                f"Allocated port {listener.get_port()} for remote forward to {target}\n"
            )
    except OSError as e:
        where = spec.listen_path or host or "*"
        raise client_errors.cannot_bind(
            where, spec.listen_port or 0, e.strerror or str(e)
        ) from None
    except asyncssh.ChannelListenError as e:
        peer = conn.get_extra_info("peername", ("the peer",))[0]
        raise client_errors.cannot_bind(f"{peer}", spec.listen_port or 0, str(e)) from None


def _want_pty(args: SshArgs) -> bool:
    if args.tty < 0:
        return False
    if args.tty >= 2:
        return True
    if args.tty == 1 or not args.command:
        return terminal.is_terminal(0)
    return False


async def _session(conn: asyncssh.SSHClientConnection, args: SshArgs) -> int:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    pty = _want_pty(args)
    size_fd = 0 if terminal.is_terminal(0) else 1
    stdin = _Input(loop)
    chan, _ = await conn.create_session(
        lambda: _Output(closed, stdin.pause, stdin.resume),
        command=args.command or None,
        request_pty="force" if pty else False,
        term_type=os.environ.get("TERM", "xterm") if pty else None,
        term_size=terminal.terminal_size(size_fd) if pty else None,
        send_env=_SEND_ENV,
        encoding=None,
        max_pktsize=ssh_packets.MAX_PACKET,  # meshssh-sshd may send 128 KiB packets
    )
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        chan.send_signal("INT")
        chan.close()

    stop_resize = None
    with terminal.raw_mode(0) if pty else contextlib.nullcontext():
        if pty and terminal.is_terminal(size_fd):
            stop_resize = terminal.on_resize(loop, size_fd, lambda s: chan.change_terminal_size(*s))
        else:
            loop.add_signal_handler(signal.SIGINT, interrupt)
        stdin.start(chan)
        try:
            await closed
        finally:
            stdin.stop()
            if stop_resize is not None:
                stop_resize()
            else:
                loop.remove_signal_handler(signal.SIGINT)
    if interrupted:
        return 130
    status = chan.get_exit_status()
    signal_info = chan.get_exit_signal()
    if signal_info is not None:
        sys.stderr.write(f"meshssh: remote command killed by signal {signal_info[0]}\n")
        return 255
    return status if status is not None and status >= 0 else 255


async def run_ssh(link: ClientLink, args: SshArgs) -> int:
    """Run ``meshssh ssh`` with parsed ``args``; returns the exit status.

    Raises:
        meshssh_cli.ssh.errors.ClientError: the connection, login or a forward failed.
    """
    ssh_packets.install()  # asyncssh's leaner packet path, as in sshd and the proxy
    peer = await resolve(link, args.host)
    source = await link.local_mesh_ip()
    agent = os.environ.get("SSH_AUTH_SOCK", "") if args.agent else ""
    if args.agent and not agent:
        sys.stderr.write("meshssh: -A: no agent to forward (SSH_AUTH_SOCK is not set)\n")
    conn = await dial(
        peer, args.port, args.user, link, source=source, agent_forwarding=agent or False
    )
    try:
        for spec in args.local:
            await _forward(conn, spec, remote=False)
        for spec in args.remote:
            await _forward(conn, spec, remote=True)
        if args.no_command:
            return await _forwards_only(conn)
        try:
            return await _session(conn, args)
        except asyncssh.ChannelOpenError as e:
            raise client_errors.permission_denied(
                args.user, peer.name, f"session refused: {e.reason}"
            ) from None
    finally:
        conn.close()
        await conn.wait_closed()


async def _forwards_only(conn: asyncssh.SSHClientConnection) -> int:
    """``-N``: keep the forwards until the peer closes or the user interrupts."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, conn.close)
    try:
        await conn.wait_closed()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
