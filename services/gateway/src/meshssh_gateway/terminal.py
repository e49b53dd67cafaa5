"""One browser terminal: a WebSocket bridged to a PTY shell on the target (DESIGN step 4).

Frames: browser → gateway, binary = keystrokes and pastes (written to the channel as they
are), text ``{"type":"resize","cols":C,"rows":R}`` (a window change); gateway → browser,
binary = terminal output, then exactly one text frame, ``{"type":"exit","status":N,
"message":"..."}`` when the shell ended or ``{"type":"error","message":"..."}`` when anything
else ended it (sshd's text, e.g. "access revoked"; the idle timeout; a shutdown), and the
close. Output that arrived before the end is sent before that last frame.

Back-pressure, both ways, so that a slow browser (or a slow target) cannot grow the gateway's
memory: output goes through a queue whose size is counted; above ``send_buffer`` bytes the
channel stops being read (asyncssh then stops opening sshd's window, so sshd stops sending),
and below half of it reading resumes (``backpressure_pauses_total`` counts the pauses).
Per terminal the gateway holds at most: that queue, one SSH window (256 KiB), and the
WebSocket transport's buffer. Keystrokes wait while the channel's own send buffer is full
(asyncssh's ``pause_writing``).

The idle timeout counts from the last byte either way; resizes do not count.

Example::

    outcome = await Terminal(ws, idle_timeout=900, send_buffer=262144, m=m, log=log).run(
        conn, watch, cols=120, rows=40, stop=stopping)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import time
from dataclasses import dataclass

import asyncssh
from starlette.websockets import WebSocket, WebSocketDisconnect

from meshssh_common.logs import BoundLogger
from meshssh_gateway.metrics import GatewayMetrics, SessionResult
from meshssh_gateway.ssh_target import ConnectionWatch

__all__ = ["REVOKED", "Outcome", "Terminal", "error_frame", "exit_frame", "resize_of"]

REVOKED = "access revoked"  # sshd's disconnect reason when policy took the access away
_FRAME = 64 * 1024  # output chunks are joined into frames up to this size
_DRAIN = 5.0  # seconds to send the output left when the session ended
_MAX_SIZE = 1000  # columns or rows
_NOTICE = b"meshssh: "  # how sshd's own notices on a session's stderr start
_REASON_WAIT = 2.0  # seconds to wait for sshd's disconnect reason after the channel closed


def exit_frame(status: int, message: str = "") -> str:
    """The text frame that ends a terminal whose shell exited."""
    return json.dumps({"type": "exit", "status": status, "message": message})


def error_frame(message: str) -> str:
    """The text frame that ends a terminal for any other reason (then the close)."""
    return json.dumps({"type": "error", "message": message})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a terminal ended, for metrics and the audit."""

    result: SessionResult
    status: int | None  # the shell's exit status (None: it did not exit)
    message: str
    bytes_in: int
    bytes_out: int
    duration: float


class _Channel(asyncssh.SSHClientSession[bytes]):
    """asyncssh's side of the channel; every callback runs on the event loop."""

    def __init__(self, term: Terminal) -> None:
        self._term = term

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._term.stderr(data)
        self._term.output(data)

    def pause_writing(self) -> None:
        self._term.input_room.clear()

    def resume_writing(self) -> None:
        self._term.input_room.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._term.channel_closed(exc)


class Terminal:
    """The bridge of one terminal (see the module docstring)."""

    def __init__(
        self,
        ws: WebSocket,
        *,
        idle_timeout: float,
        send_buffer: int,
        m: GatewayMetrics,
        log: BoundLogger,
    ) -> None:
        self.ws = ws
        self.idle_timeout = idle_timeout
        self.send_buffer = send_buffer
        self.m = m
        self.log = log
        self.input_room = asyncio.Event()
        self.input_room.set()
        self.bytes_in = 0
        self.bytes_out = 0
        self.buffered = 0  # output bytes queued, not yet handed to the WebSocket
        self.notice = ""  # stderr: sshd's last "meshssh: ..." line (why it closes the session)
        self._queue: collections.deque[bytes] = collections.deque()
        self._have_output = asyncio.Event()
        self._drained = asyncio.Event()  # set while nothing waits to be sent
        self._drained.set()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._paused = False
        self._closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._last = time.monotonic()

    # -- called by the channel -----------------------------------------------------------------

    def output(self, data: bytes) -> None:
        """Queue output for the browser; pause the channel when too much waits."""
        self._queue.append(data)
        self.buffered += len(data)
        self.bytes_out += len(data)
        self.m.bytes.labels(direction="out").inc(len(data))
        self._last = time.monotonic()
        self._have_output.set()
        self._drained.clear()
        if self.buffered > self.send_buffer and not self._paused and self._chan is not None:
            self._paused = True
            self._chan.pause_reading()
            self.m.backpressure_pauses.inc()

    def stderr(self, data: bytes) -> None:
        """Keep sshd's last notice (``meshssh: access revoked: ...``) for the last frame."""
        for line in data.splitlines():
            if line.startswith(_NOTICE):
                self.notice = line[len(_NOTICE) :].decode(errors="replace").strip()[:300]

    def channel_closed(self, exc: Exception | None) -> None:
        """The channel ended (the shell exited, or the connection went)."""
        if not self._closed.done():
            self._closed.set_result(exc)

    # -- the session ------------------------------------------------------------------------------

    async def run(
        self,
        conn: asyncssh.SSHClientConnection,
        watch: ConnectionWatch,
        *,
        cols: int,
        rows: int,
        stop: asyncio.Event,
    ) -> Outcome:
        """Open the PTY shell, bridge until it ends, send the last frame and close."""
        started = time.monotonic()
        chan, _ = await conn.create_session(
            lambda: _Channel(self),
            term_type="xterm-256color",
            term_size=(cols, rows),
            encoding=None,
        )
        self._chan = chan
        sender = asyncio.create_task(self._send_output())
        ends: dict[asyncio.Future[object], SessionResult] = {
            asyncio.ensure_future(self._closed): SessionResult.EXITED,
            asyncio.create_task(self._read_input(chan)): SessionResult.BROWSER_CLOSED,
            asyncio.create_task(self._idle()): SessionResult.IDLE,
            asyncio.create_task(stop.wait()): SessionResult.SHUTDOWN,
        }
        try:
            done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            result = ends[first]
            if not first.cancelled() and (error := first.exception()) is not None:
                self.log.error("terminal part failed", exc_info=error)
                result = SessionResult.CLOSED
        finally:
            for task in ends:
                if not task.done():
                    task.cancel()
            for task in ends:
                with contextlib.suppress(BaseException):
                    await task
        status: int | None = None
        message = ""
        if result is SessionResult.EXITED:
            result, status, message = await self._ending(chan, watch, self._closed.result())
        elif result is SessionResult.IDLE:
            message = f"closed after {self.idle_timeout:g} s without input or output (idle timeout)"
        elif result is SessionResult.SHUTDOWN:
            message = "the gateway is shutting down; open the terminal again"
        chan.close()
        if result is not SessionResult.BROWSER_CLOSED:
            await self._finish(sender, status, message)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        return Outcome(
            result, status, message, self.bytes_in, self.bytes_out, time.monotonic() - started
        )

    async def _ending(
        self,
        chan: asyncssh.SSHClientChannel[bytes],
        watch: ConnectionWatch,
        exc: Exception | None,
    ) -> tuple[SessionResult, int | None, str]:
        """Why the channel ended: an exit status, a signal, or sshd's disconnect reason."""
        code = chan.get_exit_status()
        if code is not None and code >= 0:
            return SessionResult.EXITED, code, ""
        exit_signal = chan.get_exit_signal()
        if exit_signal is not None:
            name = exit_signal[0]
            number = getattr(signal, f"SIG{name}", None)
            status = 128 + int(number) if number is not None else 255
            return SessionResult.EXITED, status, f"killed by signal {name}"
        # No exit status: sshd ended the session. It says why on the session's stderr first
        # (asyncssh reports a disconnect "by application" without its reason), then in the
        # disconnect, which may still be on its way.
        reason = exc.reason if isinstance(exc, asyncssh.DisconnectError) else ""
        if not reason and not self.notice:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REASON_WAIT):
                    await watch.lost.wait()
            reason = watch.reason
        if REVOKED in reason or self.notice.startswith(REVOKED):
            return SessionResult.REVOKED, None, REVOKED
        return SessionResult.CLOSED, None, reason or self.notice or "the SSH connection closed"

    async def _finish(self, sender: asyncio.Task[None], status: int | None, message: str) -> None:
        """Send the output left (bounded), then the last frame, then close."""
        if not sender.done():  # a sender that failed (the browser went) has nothing to drain
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN):
                    await self._drained.wait()
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        frame = exit_frame(status, message) if status is not None else error_frame(message)
        with contextlib.suppress(Exception):  # a browser that stopped reading gets no more
            async with asyncio.timeout(_DRAIN):
                await self.ws.send_text(frame)
                await self.ws.close(1000 if status is not None else 1008)

    async def _send_output(self) -> None:
        chan = self._chan
        while True:
            await self._have_output.wait()
            if not self._queue:
                self._have_output.clear()
                self._drained.set()
                continue
            parts: list[bytes] = []
            size = 0
            while self._queue and size < _FRAME:
                part = self._queue.popleft()
                parts.append(part)
                size += len(part)
            await self.ws.send_bytes(b"".join(parts))
            self.buffered -= size
            if self._paused and self.buffered <= self.send_buffer // 2 and chan is not None:
                self._paused = False
                chan.resume_reading()

    async def _read_input(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        """Until the browser goes: keystrokes to the channel, resizes to the PTY."""
        while True:
            try:
                msg = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is not None:
                await self.input_room.wait()
                chan.write(data)
                self.bytes_in += len(data)
                self.m.bytes.labels(direction="in").inc(len(data))
                self._last = time.monotonic()
            elif msg.get("text") is not None:
                size = resize_of(msg["text"])
                if size is None:
                    self.log.info("ignored a text frame that is not a resize")
                    continue
                chan.change_terminal_size(*size)

    async def _idle(self) -> None:
        while True:
            left = self._last + self.idle_timeout - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)


def resize_of(text: str) -> tuple[int, int] | None:
    """``(cols, rows)`` of a resize frame; None when it is not one (or out of range)."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict) or frame.get("type") != "resize":
        return None
    cols, rows = frame.get("cols"), frame.get("rows")
    if not all(type(v) is int and 1 <= v <= _MAX_SIZE for v in (cols, rows)):
        return None
    assert isinstance(cols, int)
    assert isinstance(rows, int)
    return cols, rows
