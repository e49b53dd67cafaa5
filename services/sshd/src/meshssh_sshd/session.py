"""One SSH session channel: PTY or not, shell, exec or the sftp subsystem (SPEC §7).

Lifecycle (asyncssh calls the hooks in this order): ``connection_made`` → any of ``env``
(kept by the channel), ``pty_requested`` → one of ``shell_requested`` / ``exec_requested`` /
``subsystem_requested`` → ``session_started``, which starts the process as the session's
account; then data, EOF, ``signal``, window changes; the process's exit status (or signal)
goes back before the channel closes. If the client goes away first, ``connection_lost``
hangs up / SIGTERMs the process group and SIGKILLs it after the grace.

A refused feature still answers with its SPEC §9 text on stderr and exit status 1, so the
user sees why (``SFTP subsystem not available ...``); a refused agent forwarding request
(``Agent forwarding not available ...``) only adds the notice, the session runs. With agent
forwarding on, shells and commands get ``SSH_AUTH_SOCK`` (:mod:`meshssh_sshd.agent_socket`).

Example::

    def session_requested(self):
        return SessionChannel(core, record, account)
"""

from __future__ import annotations

import os
import shlex
import signal
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from meshssh_common.wire import AuditKind, SessionInfo
from meshssh_sshd.accounts import NOT_AVAILABLE, Account
from meshssh_sshd.login_env import session_env, shell_argv
from meshssh_sshd.process_launch import ChildProcess, LaunchSpec, PtySpec, exit_signal_name
from meshssh_sshd.recorder import LOST_TEXT, UNAVAILABLE_TEXT, Recorder
from meshssh_sshd.session_clock import SessionClock
from meshssh_sshd.session_recording import open_recorder
from meshssh_sshd.sessions import LiveConnection

if TYPE_CHECKING:
    from meshssh_sshd.core import SshdCore

__all__ = ["SFTP_REFUSED", "SessionChannel", "summarize"]

SFTP_REFUSED = (
    "SFTP subsystem not available: SFTP is off on this peer; start the peer with --enable-ssh-sftp"
)
_SFTP_MISSING = (
    "SFTP subsystem not available: no sftp-server program on this peer; "
    "install openssh-sftp-server or start the peer with --sftp-server PATH"
)


def summarize(command: str | None) -> str:
    """A command for audit and status: its program and an argument count, never arguments."""
    if command is None:
        return "shell"
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if not words:
        return "exec"
    program = os.path.basename(words[0])[:64]
    return program if len(words) == 1 else f"{program} +{len(words) - 1}"


class SessionChannel(asyncssh.SSHServerSession[bytes]):
    """The server side of one ``session`` channel."""

    def __init__(self, core: SshdCore, record: LiveConnection, account: Account) -> None:
        self._core = core
        self._record = record
        self._account = account
        self._id = uuid.uuid4().hex[:12]
        self._log = core.log.bind(conn=record.conn_id, session=self._id)
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None  # connection_made
        self._pty: PtySpec | None = None  # pty_requested / terminal_size_changed
        self._kind = ""  # shell_requested / exec_requested / subsystem_requested
        self._command: str | None = None  # exec_requested
        self._child: ChildProcess | None = None  # set by _run once the process started
        self._pending: list[bytes] = []  # input that arrived before the process started
        self._pending_eof = False
        self._lost = False  # connection_lost: the client is gone
        self._bytes_in = 0
        self._bytes_out = 0
        self._started = time.monotonic()
        self._ended_by = ""  # a session rule's limit that ended the session
        self._clock = SessionClock(record.rules, expired=self._limit_reached)
        self._recorder: Recorder | None = None  # _run, when the login's rules say so
        self._paused_by: set[str] = set()  # who paused the program's output: client, recorder

    # -- requests (return True to accept) -----------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """The channel opened: count it."""
        self._chan = chan
        self._core.session_opened()

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        """Keep the terminal type and size for the process to come."""
        cols, rows, xpix, ypix = term_size
        self._pty = PtySpec(term_type or "xterm-256color", cols, rows, xpix, ypix, dict(term_modes))
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """A window change: resize the PTY (the program gets SIGWINCH)."""
        if self._pty is None:
            return
        self._pty = PtySpec(self._pty.term, width, height, pixwidth, pixheight, self._pty.modes)
        if self._recorder is not None:
            self._recorder.resize(width, height)
        if self._child is not None:
            self._child.resize(self._pty)

    def shell_requested(self) -> bool:
        """A login shell (with or without a PTY)."""
        self._kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        """A command, run by the user's shell."""
        self._kind, self._command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """Only ``sftp`` exists; when it is off the session says so on stderr."""
        if subsystem != "sftp":
            self._log.info("unknown subsystem refused", extra={"subsystem": subsystem[:64]})
            return False
        self._kind = "sftp"
        return True

    def session_started(self) -> None:
        """The request was accepted: start the process."""
        self._core.tasks.spawn(self._run(), f"session-{self._id}")

    # -- data from the client -----------------------------------------------------------------

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Client input: to the process, or held until it started."""
        self._bytes_in += len(data)
        self._clock.touch()
        if self._recorder is not None:
            self._recorder.input(data)
        if self._child is not None:
            self._child.write(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool:
        """Client EOF: close the process's stdin; keep the channel for output."""
        if self._child is not None:
            self._child.write_eof()
        else:
            self._pending_eof = True
        return True  # keep the channel open: output and the exit status still flow

    def signal_received(self, signal_name: str) -> None:
        """A ``signal`` request: to the process group."""
        try:
            signum = signal.Signals["SIG" + signal_name.upper()]
        except KeyError:
            self._log.info("unknown signal ignored", extra={"signal": signal_name[:16]})
            return
        if self._child is not None:
            self._child.send_signal(signum)

    def break_received(self, msec: int) -> bool:
        """Breaks are not supported."""
        return False

    def pause_writing(self) -> None:
        """The client's window is full: stop reading the process's output."""
        self._pause_output("client", True)

    def resume_writing(self) -> None:
        """The client's window opened again."""
        self._pause_output("client", False)

    def _pause_output(self, by: str, on: bool) -> None:
        """Output is read only while neither the client nor a required recording holds it."""
        was = bool(self._paused_by)
        if on:
            self._paused_by.add(by)
        else:
            self._paused_by.discard(by)
        if self._child is None or was == bool(self._paused_by):
            return
        if self._paused_by:
            self._child.pause_output()
        else:
            self._child.resume_output()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel closed: stop the process if it still runs."""
        self._lost = True
        self._clock.stop()
        self._core.session_closed()
        child = self._child
        if child is not None and not child.exited.is_set():
            self._log.info("client gone: stopping the session's processes")
            self._core.tasks.spawn(child.terminate(self._core.settings.kill_grace), "kill")

    # -- the process sink (called by ChildProcess) --------------------------------------------

    def output(self, data: bytes, stderr: bool) -> None:
        """Process output to the client."""
        chan = self._chan
        if chan is None or self._lost:
            return
        self._bytes_out += len(data)
        self._clock.touch()
        if self._recorder is not None:
            self._recorder.output(data)
        if stderr:
            chan.write_stderr(data)
        else:
            chan.write(data)

    def input_paused(self) -> None:
        """The process's input is full: stop reading from the client."""
        if self._chan is not None and not self._lost:
            self._chan.pause_reading()

    def input_resumed(self) -> None:
        """The process's input drained."""
        if self._chan is not None and not self._lost:
            self._chan.resume_reading()

    def notify(self, text: str) -> None:
        """Show ``text`` on the client's stderr (revocation, refused forwards)."""
        if self._chan is not None and not self._lost:
            line = f"\r\n{text}\r\n" if self._pty is not None else f"{text}\n"
            self._chan.write_stderr(line.encode())

    def _limit_reached(self, reason: str, text: str) -> None:
        """A session rule's limit (idle timeout, maximum length) ends the session."""
        self._core.metrics.session_limits.labels(reason=reason).inc()
        self._end_by_rule("session-limit", reason, reason, text)

    def _recording_lost(self, reason: str) -> None:
        """A ``required`` recording stopped being stored: the session ends (fail closed)."""
        self._end_by_rule("recording-failed", reason, "recording_" + reason, LOST_TEXT)

    def _end_by_rule(self, kind: AuditKind, reason: str, ended_by: str, text: str) -> None:
        self._ended_by = ended_by
        self._core.audit.emit(kind, **self._fields(summarize(self._command)), reason=reason)
        self._log.info("session ended by a session rule", extra={"kind": kind, "reason": reason})
        self.notify(text)
        if self._chan is not None and not self._lost:
            self._chan.exit(255)

    # -- the session itself ---------------------------------------------------------------------

    def _finish(self, status: int) -> None:
        if self._chan is None or self._lost:
            return
        signame = exit_signal_name(status)
        if signame is None:
            self._chan.exit(status)
        else:
            self._chan.exit_with_signal(signame)

    def _spec(self) -> LaunchSpec | None:
        acct = self._account
        term = self._pty.term if self._pty is not None else None
        assert self._chan is not None
        env = session_env(acct, self._record.origin, self._chan.get_environment(), term=term)
        cwd = acct.home if os.path.isdir(acct.home) else "/"
        if self._kind == "sftp":
            if self._core.sftp_server is None:
                return None
            # As OpenSSH runs a subsystem: through the user's shell, as the user, so a
            # restricted shell applies to SFTP too.
            executable, argv = shell_argv(acct, shlex.quote(self._core.sftp_server))
            return LaunchSpec(executable, argv, env, cwd, acct)
        if self._record.agent_path:  # ssh -A was accepted on this connection
            env["SSH_AUTH_SOCK"] = self._record.agent_path
        executable, argv = shell_argv(acct, self._command)
        return LaunchSpec(executable, argv, env, cwd, acct, self._pty)

    async def _run(self) -> None:
        core, record = self._core, self._record
        for notice in record.notices:
            self.notify(notice)
        record.notices.clear()
        if self._kind == "sftp" and not core.settings.enable_ssh_sftp:
            core.metrics.sftp_sessions.labels(result="refused").inc()
            self._log.info("sftp refused: flag off")
            self.notify(SFTP_REFUSED)
            self._finish(1)
            return
        if self._account.no_login:  # OpenSSH: nologin prints this; /bin/false says nothing
            core.metrics.session_refusals.labels(reason="no_login_shell").inc()
            if self._kind == "sftp":
                core.metrics.sftp_sessions.labels(result="refused").inc()
            self._log.info(
                "session refused: the account's shell is nologin/false",
                extra={"kind": self._kind, "user": self._account.name},
            )
            self.notify(NOT_AVAILABLE)
            self._finish(1)
            return
        spec = self._spec()
        if spec is None:
            core.metrics.sftp_sessions.labels(result="unavailable").inc()
            self._log.warning("sftp requested but no sftp-server program was found")
            self.notify(_SFTP_MISSING)
            self._finish(1)
            return
        summary = "sftp" if self._kind == "sftp" else summarize(self._command)
        info = SessionInfo(
            session_id=self._id,
            local_user=self._account.name,
            jwt_user=record.jwt_user,
            source=record.origin.label,
            command=summary,
            started_at=time.time(),
        )
        may_start, self._recorder = await open_recorder(
            core,
            record,
            session_id=self._id,
            local_user=self._account.name,
            pty=self._pty,
            kind=self._kind,
            command=summary,
            log=self._log,
            failed=self._recording_lost,
            pressure=lambda on: self._pause_output("recorder", on),
        )
        if not may_start:
            self.notify(UNAVAILABLE_TEXT)
            self._finish(1)
            return
        try:
            self._child = await ChildProcess.start(spec, self)
        except OSError as e:
            self._log.warning("session process did not start", extra={"error": str(e)})
            self.notify(f"meshssh: cannot start the session: {e.strerror or e}")
            self._finish(1)
            if self._recorder is not None:
                core.tasks.spawn(self._recorder.close(), f"recorder-{self._id}")
            return
        self._begin(info)
        self._core.children.add(self._child)
        try:
            for chunk in self._pending:
                self._child.write(chunk)
            self._pending.clear()
            if self._pending_eof:
                self._child.write_eof()
            status = await self._child.wait()
            self._child.close()
            self._finish(status)
        finally:
            self._core.children.discard(self._child)
            if not self._child.exited.is_set():  # cancelled at shutdown: do not leave it running
                self._child.send_signal(signal.SIGKILL)
            self._child.close()
            if self._recorder is not None:
                core.tasks.spawn(self._recorder.close(), f"recorder-{self._id}")
            self._end(info)

    def _fields(self, summary: str) -> dict[str, Any]:
        r = self._record
        return {
            "session_id": self._id,
            "local_user": self._account.name,
            "jwt_user": r.jwt_user,
            "source_addr": r.origin.label,
            "command": summary,
            **r.origin.peer_fields(),
        }

    def _begin(self, info: SessionInfo) -> None:
        core = self._core
        kind: AuditKind = "sftp-start" if self._kind == "sftp" else "session-start"
        core.live.session_started(self._record, info)
        self._clock.start()
        core.metrics.sessions.labels(kind=self._kind).inc()
        if self._kind == "sftp":
            core.metrics.sftp_sessions.labels(result="started").inc()
        core.audit.emit(kind, **self._fields(info.command))
        self._log.info(
            "session started",
            extra={
                "kind": self._kind,
                "command": info.command,
                "pty": self._pty is not None,
                "user": self._account.name,
                "pid": self._child.pid if self._child else 0,
            },
        )

    def _end(self, info: SessionInfo) -> None:
        core = self._core
        self._clock.stop()
        duration = time.monotonic() - self._started
        core.live.session_ended(self._record, self._id)
        core.metrics.session_duration.observe(duration)
        core.metrics.bytes.labels(direction="in").inc(self._bytes_in)
        core.metrics.bytes.labels(direction="out").inc(self._bytes_out)
        kind: AuditKind = "sftp-end" if self._kind == "sftp" else "session-end"
        status = self._child.returncode() if self._child is not None else None
        core.audit.emit(
            kind,
            **self._fields(info.command),
            duration=round(duration, 3),
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            result="" if status is None else str(status),
            reason=self._ended_by,
        )
        self._log.info(
            "session ended",
            extra={
                "status": status,
                "seconds": round(duration, 3),
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
            },
        )
