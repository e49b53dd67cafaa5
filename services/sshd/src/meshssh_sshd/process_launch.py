"""Session processes: spawned as the target user, on pipes or a PTY, killed by process group.

A child is started by the event loop's subprocess machinery (no thread per byte), in a new
session (so its pid is its process group), and, when the server is root and the account
differs, with ``setgroups`` → ``setgid`` → ``setuid`` done in the child before ``exec``
(Python's ``subprocess`` ``extra_groups``/``group``/``user``), so no ``login``/``su`` binary
is needed. With a PTY the slave becomes the child's controlling terminal (``TIOCSCTTY``) and is
owned by the user, as OpenSSH does; window changes are ``TIOCSWINSZ`` on the master.

Data flows without extra buffering: output goes to ``sink.output`` as it is read, and input is
written to the child once per event-loop turn (the packets one socket read delivered leave in
one pipe write, so ``cat`` wakes once, not once per 32 KiB packet); when the child's stdin
backs up, ``sink.input_paused`` asks the SSH channel to stop reading, so the client's window
closes instead of memory growing. The pipes are widened to ``PIPE_SIZE`` (Linux), so a child
streaming output runs ahead while the server encrypts, and each read carries more than the
child's 4 KiB writes (measured with bench/ssh_throughput.py: reads of 4 KiB otherwise).

Example::

    child = await ChildProcess.start(spec, sink)
    child.write(b"input")
    code = await child.wait()        # negative: killed by that signal
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import grp
import os
import signal
import struct
import termios
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshssh_sshd.accounts import Account
from meshssh_sshd.terminal_modes import apply_modes

__all__ = ["PIPE_SIZE", "ChildProcess", "LaunchSpec", "ProcessSink", "PtySpec", "exit_signal_name"]

_PTY_DRAIN = 1.0  # seconds a PTY stays quiet, while read, after its process exited
PIPE_SIZE = 1024 * 1024  # bytes each pipe to a session process holds (kernel default: 64 KiB)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ProcessSink(Protocol):
    """Where a child's output and flow-control signals go (the SSH session)."""

    def output(self, data: bytes, stderr: bool) -> None:
        """Deliver output; ``stderr`` is True for the child's fd 2 (never with a PTY)."""

    def input_paused(self) -> None:
        """The child's input is backed up: stop reading from the client."""

    def input_resumed(self) -> None:
        """The child's input drained: read from the client again."""


@dataclass(frozen=True, slots=True)
class PtySpec:
    """What the client asked for in its ``pty-req`` (and later window changes)."""

    term: str
    cols: int
    rows: int
    xpixels: int = 0
    ypixels: int = 0
    modes: Mapping[int, int] = field(default_factory=dict)  # RFC 4254 §8 opcode → value


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """How to start one session process."""

    executable: str
    argv: tuple[str, ...]  # argv[0] may differ from the executable ("-bash")
    env: Mapping[str, str]
    cwd: str
    account: Account
    pty: PtySpec | None = None


def exit_signal_name(returncode: int) -> str | None:
    """``TERM`` for a child killed by SIGTERM (asyncio reports ``-15``); None for an exit."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        return "KILL"


def _set_winsize(fd: int, pty: PtySpec) -> None:
    size = struct.pack("HHHH", pty.rows or 24, pty.cols or 80, pty.xpixels, pty.ypixels)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


def _widen(transport: asyncio.BaseTransport | None) -> None:
    """Give a pipe PIPE_SIZE bytes (best effort: Linux only, up to pipe-max-size)."""
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is not None:
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)


def _tty_gid() -> int:
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return -1


class _PipeProtocol(asyncio.SubprocessProtocol):
    """The child's pipes and exit (pipe mode) or only its exit (PTY mode)."""

    def __init__(self, owner: ChildProcess) -> None:
        self._owner = owner

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._owner.sink.output(data, fd == 2)

    def pause_writing(self) -> None:
        self._owner.sink.input_paused()

    def resume_writing(self) -> None:
        self._owner.input_resumed()

    def process_exited(self) -> None:
        self._owner.on_exited()

    def connection_lost(self, exc: Exception | None) -> None:
        # Called once the process exited and every pipe closed: all output was delivered.
        # A PTY's output is not one of these pipes: its end is the master's hang-up or the
        # drain, so here (right after the exit) it is not done yet.
        if self._owner.pty is None:
            self._owner.on_pipes_done()


class _MasterReader(asyncio.Protocol):
    def __init__(self, owner: ChildProcess) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        self._owner.last_output = asyncio.get_running_loop().time()
        self._owner.sink.output(data, False)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # EIO once every slave fd is closed: the terminal is gone.
        self._owner.on_pipes_done()


class _MasterWriter(asyncio.BaseProtocol):
    def __init__(self, owner: ChildProcess) -> None:
        self._owner = owner

    def pause_writing(self) -> None:
        self._owner.sink.input_paused()

    def resume_writing(self) -> None:
        self._owner.input_resumed()


@dataclass(eq=False)
class ChildProcess:
    """A running session process; create with :meth:`start`."""

    sink: ProcessSink
    pty: PtySpec | None
    transport: asyncio.SubprocessTransport | None = None
    pid: int = 0
    master_reader: asyncio.ReadTransport | None = None
    master_writer: asyncio.WriteTransport | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _held: list[bytes] | None = None  # input for the child, written at the end of this turn
    last_output: float = 0.0  # loop time of the PTY's last output
    _output_paused: bool = False  # the session stopped reading the output (client, recorder)

    @classmethod
    async def start(cls, spec: LaunchSpec, sink: ProcessSink) -> ChildProcess:
        """Start the process described by ``spec``.

        Raises:
            OSError: the executable could not be started (missing, not executable, bad cwd).
        """
        loop = asyncio.get_running_loop()
        self = cls(sink, spec.pty)
        acct = spec.account
        kwargs: dict[str, Any] = {
            "executable": spec.executable,
            "env": dict(spec.env),
            "cwd": spec.cwd,
            "start_new_session": True,
            "close_fds": True,
        }
        if acct.switch:
            kwargs.update(user=acct.uid, group=acct.gid, extra_groups=list(acct.groups))
        if spec.pty is None:
            pipe = asyncio.subprocess.PIPE
            transport, _ = await loop.subprocess_exec(
                lambda: _PipeProtocol(self),
                *spec.argv,
                stdin=pipe,
                stdout=pipe,
                stderr=pipe,
                **kwargs,
            )
            self.transport = transport
            self.pid = transport.get_pid()
            for fd in (0, 1, 2):
                _widen(transport.get_pipe_transport(fd))
            return self
        master, slave = os.openpty()
        try:
            _set_winsize(slave, spec.pty)
            apply_modes(slave, spec.pty.modes)
            kwargs["env"]["SSH_TTY"] = os.ttyname(slave)
            if acct.switch:
                os.fchown(slave, acct.uid, _tty_gid())
                os.fchmod(slave, 0o620)
            # Runs in the child after setsid and the uid change: adopt the slave (already
            # dup'ed onto fd 0) as the controlling terminal. A C call, no Python state.
            ctty = functools.partial(fcntl.ioctl, 0, termios.TIOCSCTTY, 0)
            transport, _ = await loop.subprocess_exec(
                lambda: _PipeProtocol(self),
                *spec.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                preexec_fn=ctty,
                **kwargs,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.transport = transport
        self.pid = transport.get_pid()
        reader_file = os.fdopen(master, "rb", buffering=0)
        writer_file = os.fdopen(os.dup(master), "wb", buffering=0)
        self.master_reader, _ = await loop.connect_read_pipe(
            lambda: _MasterReader(self), reader_file
        )
        self.master_writer, _ = await loop.connect_write_pipe(
            lambda: _MasterWriter(self), writer_file
        )
        return self

    # -- called by the protocols -------------------------------------------------------------

    def input_resumed(self) -> None:
        """The child's input drained: let the client send again, on the next loop turn.

        Not inline: asyncio's pipe transport calls ``resume_writing`` from its write handler
        and, if the input is closed while that handler runs (data then EOF delivered in the
        same turn), closes the pipe without flushing what was just written (CPython 3.11
        ``_UnixWritePipeTransport._write_ready``), which lost the tail of uploads.
        """
        asyncio.get_running_loop().call_soon(self.sink.input_resumed)

    def on_exited(self) -> None:
        """The process exited (its output may still be in flight)."""
        self.exited.set()
        if self.pty is not None:
            self.last_output = asyncio.get_running_loop().time()  # quiet counts from here
            self._drain()

    def _drain(self) -> None:
        """After the exit, until the PTY hangs up or stays quiet :data:`_PTY_DRAIN` s.

        A background job may hold the terminal open, so its hang-up may never come. Quiet
        time counts only while the output is read: output that waits for a slow client, or for
        the recorder to catch up, is still delivered (a timer from the exit alone cut it off).
        """
        if self.done.is_set():
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self.last_output
        if self._output_paused or quiet < _PTY_DRAIN:
            wait = _PTY_DRAIN if self._output_paused else _PTY_DRAIN - quiet
            loop.call_later(wait, self._drain)
            return
        self.on_pipes_done()

    def on_pipes_done(self) -> None:
        """All output was delivered (pipes closed, or the PTY hung up or timed out)."""
        if self.pty is not None and not self.exited.is_set():
            return  # EIO before the exit is reported: wait for process_exited
        self.done.set()

    # -- used by the session -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send client input to the child (dropped once its input is closed).

        Held until the end of this event-loop turn, then written with the rest of the turn's
        input in one system call.
        """
        if self._held is None:
            self._held = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._held.append(data)

    def flush(self) -> None:
        """Write the held input now."""
        held, self._held = self._held, None
        target = self.master_writer if self.pty is not None else self._stdin()
        if held and target is not None and not target.is_closing():
            target.write(held[0] if len(held) == 1 else b"".join(held))

    def write_eof(self) -> None:
        """The client sent EOF: close the child's stdin (a PTY has no half-close)."""
        self.flush()
        stdin = self._stdin()
        if self.pty is None and stdin is not None and not stdin.is_closing():
            stdin.close()

    def pause_output(self) -> None:
        """The client is not reading: stop reading the child's output."""
        self._output_paused = True
        for t in self._outputs():
            with contextlib.suppress(RuntimeError, AttributeError):
                t.pause_reading()

    def resume_output(self) -> None:
        """The client reads again."""
        self._output_paused = False
        self.last_output = asyncio.get_running_loop().time()  # the drain's quiet starts now
        for t in self._outputs():
            with contextlib.suppress(RuntimeError, AttributeError):
                t.resume_reading()

    def resize(self, pty: PtySpec) -> None:
        """Apply a window change (the kernel sends SIGWINCH to the foreground group)."""
        self.pty = pty
        if self.master_reader is not None and not self.master_reader.is_closing():
            fd = self.master_reader.get_extra_info("pipe").fileno()
            with contextlib.suppress(OSError):
                _set_winsize(fd, pty)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (a client ``signal`` request)."""
        if self.pid and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), None while running."""
        return None if self.transport is None else self.transport.get_returncode()

    async def wait(self) -> int:
        """Wait until the process exited and its output was delivered; its return code."""
        await self.done.wait()
        code = self.returncode()
        return 255 if code is None else code

    async def terminate(self, grace: float) -> None:
        """Stop a child whose client went away: hang up / SIGTERM, then SIGKILL after grace."""
        try:
            if not self.exited.is_set():
                first = signal.SIGHUP if self.pty is not None else signal.SIGTERM
                self.send_signal(first)
                self.send_signal(signal.SIGCONT)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self.exited.wait()
            if not self.exited.is_set():
                self.send_signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self.exited.wait()
        finally:
            self.close()

    def close(self) -> None:
        """Release the transports (the child is not signalled)."""
        for t in (self.master_reader, self.master_writer, self.transport):
            if t is not None:
                t.close()
        self.done.set()

    def _stdin(self) -> asyncio.WriteTransport | None:
        if self.transport is None:
            return None
        pipe = self.transport.get_pipe_transport(0)
        return pipe if isinstance(pipe, asyncio.WriteTransport) else None

    def _outputs(self) -> list[Any]:
        if self.pty is not None:
            return [self.master_reader] if self.master_reader is not None else []
        if self.transport is None:
            return []
        return [p for p in (self.transport.get_pipe_transport(fd) for fd in (1, 2)) if p]
