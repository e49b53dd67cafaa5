"""One OpenSSH session channel at the proxy, relayed to one session channel on the peer.

Everything a session carries is relayed, in order: environment, PTY request (type, size,
modes), shell / exec (the command string unchanged) / subsystem (``sftp``, so ``scp`` and
``sftp`` work), agent forwarding (``-A``), data both ways with stderr kept apart, EOF each
way, window changes, signals and breaks, and at the end the exit status or exit signal.
Flow control is end to end: when one side's window is full, the other side stops reading.

Lifecycle: OpenSSH's requests (env, pty-req, auth-agent-req, then shell/exec/subsystem)
arrive first and are recorded; ``session_started`` opens the peer's session with all of
them; until that is open, input, EOF, window changes and signals are held back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, cast

import asyncssh

from meshssh_cli.ssh import errors as client_errors
from meshssh_cli.ssh.errors import ClientError
from meshssh_common import ssh_packets

__all__ = ["SessionBridge", "SessionHub"]

_Upstream = asyncssh.SSHClientChannel[bytes]
_REASON_GRACE = 0.25  # seconds
_TermSize = tuple[int, int, int, int]


class SessionHub(Protocol):
    """What a session bridge needs from the proxy connection that owns it."""

    peer_name: str
    username: str

    def backend(self) -> asyncssh.SSHClientConnection:
        """The authenticated connection to the peer."""
        ...

    def agent_path(self) -> str | None:
        """OpenSSH's forwarded agent at the proxy, when OpenSSH asked for agent forwarding."""
        ...

    def enable_agent_forwarding(self, path: str) -> None:
        """Ask the peer for agent forwarding on new sessions, served from ``path``."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the proxy owns and cancels on shutdown."""
        ...

    def report(self, error: ClientError) -> None:
        """Show a failure to the user."""
        ...

    def peer_lost(self, exc: Exception | None) -> None:
        """The connection to the peer died (``exc`` says why): tell the user, end OpenSSH's."""
        ...


class _Batch:
    """Joins the chunks one event-loop pass delivers into one write: fewer, fuller packets.

    OpenSSH sends 16 KiB packets; several arrive in one read from its pipe. Writing them as
    one chunk lets the next hop send maximum-size packets, which halves the per-packet work.
    Anything that must stay in order after the data (EOF, exit, signals) calls :meth:`flush`.
    """

    def __init__(self, write: Callable[[bytes, asyncssh.DataType], None]) -> None:
        self._write = write
        self._parts: list[bytes] = []
        self._type: asyncssh.DataType = None
        self._pending: asyncio.Handle | None = None

    def add(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Queue ``data`` for the end of this pass."""
        if self._parts and datatype != self._type:
            self.flush()
        self._parts.append(data)
        self._type = datatype
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._parts:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            self._write(data, self._type)


class _UpstreamSession(asyncssh.SSHClientSession[bytes]):
    """The peer's side of the bridge: output, EOF, flow control and exit to OpenSSH."""

    def __init__(self, bridge: SessionBridge) -> None:
        self._bridge = bridge

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Peer output (stdout, or stderr as extended data)."""
        self._bridge.to_client(data, datatype)

    def eof_received(self) -> bool:
        """The peer's output ended; True keeps the channel half-open."""
        self._bridge.client_eof()
        return True  # stay half-open: OpenSSH may still be sending

    def pause_writing(self) -> None:
        """The peer's window is full: stop reading from OpenSSH."""
        self._bridge.client_chan().pause_reading()

    def resume_writing(self) -> None:
        """The peer's window has room again."""
        self._bridge.client_chan().resume_reading()

    def exit_status_received(self, status: int) -> None:
        """The remote command exited with ``status``."""
        self._bridge.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        """The remote command died of ``signal``."""
        self._bridge.exit_signal = (signal, core_dumped, msg, lang)

    def connection_lost(self, exc: Exception | None) -> None:
        """The peer closed the channel (``exc`` is set when its whole connection died)."""
        self._bridge.upstream_closed(exc)


class SessionBridge(asyncssh.SSHServerSession[bytes]):
    """OpenSSH's side of the bridge (asyncssh calls these hooks on the proxy's server channel)."""

    def __init__(self, hub: SessionHub) -> None:
        self._hub = hub
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None  # connection_made
        self._term: tuple[str, _TermSize, Mapping[int, int]] | None = None  # pty_requested
        self._command: str | None = None  # exec_requested
        self._subsystem: str | None = None  # subsystem_requested
        self._upstream: _Upstream | None = None  # _open, once the peer accepted
        self._held: list[Callable[[_Upstream], None]] = []  # until _upstream is set
        self._to_peer = _Batch(self._write_upstream)
        self._to_client = _Batch(self._write_client)
        self._client_gone = False  # connection_lost
        self.exit_status: int | None = None  # _UpstreamSession.exit_status_received
        self.exit_signal: tuple[str, bool, str, str] | None = None  # ...exit_signal_received

    # OpenSSH -> proxy hooks, in the order a session sends them

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """OpenSSH opened the session channel."""
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: _TermSize, term_modes: Mapping[int, int]
    ) -> bool:
        """OpenSSH asked for a terminal (type, size, modes); recorded for the peer."""
        self._term = (term_type, term_size, dict(term_modes))
        return True

    def shell_requested(self) -> bool:
        """OpenSSH asked for a shell (recorded; the peer decides)."""
        return True

    def exec_requested(self, command: str) -> bool:
        """OpenSSH asked to run ``command`` (passed on unchanged)."""
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """OpenSSH asked for a subsystem (``sftp`` for scp and sftp)."""
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        """All requests are in: open the peer's session with them."""
        self._hub.spawn(self._open())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Input from OpenSSH; held (reading paused) until the peer's side is open."""
        if self._upstream is not None:
            self._to_peer.add(data, None)
        else:
            self.client_chan().pause_reading()
            self._held.append(lambda up: up.write(data))

    def eof_received(self) -> bool:
        """OpenSSH's input ended; True keeps the channel half-open for output."""
        self._forward(lambda up: up.write_eof())
        return True  # stay half-open: the peer may still be sending

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """The local terminal was resized."""
        self._forward(lambda up: up.change_terminal_size(width, height, pixwidth, pixheight))

    def signal_received(self, signal: str) -> None:
        """OpenSSH sent a signal for the remote command."""
        self._forward(lambda up: up.send_signal(signal))

    def break_received(self, msec: int) -> bool:
        """OpenSSH sent a break; True reports it as handled."""
        self._forward(lambda up: up.send_break(msec))
        return True

    def pause_writing(self) -> None:
        """OpenSSH's window is full: stop reading from the peer."""
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        """OpenSSH's window has room again."""
        if self._upstream is not None:
            self._upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """OpenSSH closed the channel: close the peer's."""
        self._client_gone = True
        if self._upstream is not None:
            self._to_peer.flush()
            self._upstream.close()

    # peer -> OpenSSH

    def client_chan(self) -> asyncssh.SSHServerChannel[bytes]:
        """The proxy's channel to OpenSSH."""
        assert self._chan is not None
        return self._chan

    def to_client(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Relay peer output (stdout, or stderr as extended data) to OpenSSH."""
        self._to_client.add(data, datatype)

    def client_eof(self) -> None:
        """The peer's output ended."""
        self._to_client.flush()
        chan = self.client_chan()
        if not chan.is_closing():
            chan.write_eof()

    def upstream_closed(self, exc: Exception | None = None) -> None:
        """The peer closed its channel: end OpenSSH's the same way (exit status or signal)."""
        self._to_client.flush()
        if exc is not None:
            self._hub.peer_lost(exc)
        chan = self.client_chan()
        if chan.is_closing():
            return
        if self.exit_signal is not None:
            chan.exit_with_signal(*self.exit_signal)
        elif self.exit_status is not None:
            chan.exit(self.exit_status)
        else:
            self._hub.spawn(self._close_after_peer())

    async def _close_after_peer(self) -> None:
        """Close OpenSSH's channel, after giving the peer's reason a moment to arrive.

        A session that ends without an exit status may be the first sign that the peer is
        closing the whole connection (asyncssh closes the channels, then sends the
        disconnect with its reason); OpenSSH exits as soon as its channel closes.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hub.backend().wait_closed(), _REASON_GRACE)
        chan = self.client_chan()
        if not chan.is_closing():
            chan.close()

    # internals

    def _write_upstream(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.write(data)

    def _write_client(self, data: bytes, datatype: asyncssh.DataType) -> None:
        chan = self.client_chan()
        if not chan.is_closing():
            chan.write(data, datatype)

    def _forward(self, action: Callable[[_Upstream], None]) -> None:
        if self._upstream is not None:
            self._to_peer.flush()
            action(self._upstream)
        else:
            self._held.append(action)

    async def _open(self) -> None:
        chan = self.client_chan()
        agent = self._hub.agent_path()
        if agent is not None:
            self._hub.enable_agent_forwarding(agent)
        term_type, term_size, term_modes = self._term or (None, None, None)
        try:
            upstream, _ = await self._hub.backend().create_session(
                lambda: _UpstreamSession(self),
                command=self._command,
                subsystem=self._subsystem,
                env=cast(Any, dict(chan.get_environment())),
                request_pty="force" if self._term else False,
                term_type=term_type,
                term_size=term_size,
                term_modes=term_modes,
                encoding=None,
                max_pktsize=ssh_packets.MAX_PACKET,  # the peer's side may send 128 KiB packets
            )
        except asyncssh.ChannelOpenError as e:
            self._hub.report(self._refusal(e))
            if not chan.is_closing():
                chan.exit(255)
            return
        except (asyncssh.Error, OSError) as e:
            self._hub.report(client_errors.auth_failed(self._hub.peer_name, f"session failed: {e}"))
            if not chan.is_closing():
                chan.exit(255)
            return
        if self._client_gone:
            upstream.close()
            return
        self._upstream = upstream
        held, self._held = self._held, []
        for action in held:
            action(upstream)
        chan.resume_reading()

    def _refusal(self, e: asyncssh.ChannelOpenError) -> ClientError:
        """Turn the peer's refusal into the text users search for."""
        host, user = self._hub.peer_name, self._hub.username
        if self._subsystem == "sftp":
            return client_errors.sftp_unavailable(host)
        if self._subsystem is not None:
            return ClientError(
                "Subsystem not available",
                f"{host} refused the {self._subsystem!r} subsystem: {e.reason}",
                "the peer's meshssh version and flags.",
            )
        if e.code == asyncssh.OPEN_REQUEST_PTY_FAILED:
            return client_errors.permission_denied(user, host, "the peer refused a terminal")
        return client_errors.permission_denied(user, host, f"session refused: {e.reason}")
