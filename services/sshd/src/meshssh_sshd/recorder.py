"""The session recorder: asciicast v2, in chunks, to the ``MESHSSH_RECORDINGS`` stream.

A recording is the asciicast v2 file itself, cut into messages on the session's subject
``meshssh.rec.v1.<peer>.<session>``: the first message is the header line (the user, local
user, peer, source, start time and terminal size), the next ones carry event lines
(``[t, "o", text]`` output, ``[t, "r", "COLSxROWS"]`` resizes, ``[t, "i", text]`` input only
when the rule says ``record_input``). Concatenating the messages in order gives the file.
Each message carries the header ``Meshssh-Rec-Bytes``, the file's size up to and including it,
so a reader learns the size of a recording from its last message.

Events are buffered and published by one task, a chunk at a time (each awaits the stream's
ack), so the session never waits on the stream. With ``required`` the session starts only once
the header is acked, and it ends (``failed`` is called once) when a publish is not acked or the
backlog outgrows :data:`MAX_BACKLOG`; above :data:`HIGH_WATER` unacked bytes it asks the
session to stop reading the program's output (``pressure(True)``) until the stream caught up,
so a fast program runs at the stream's pace instead of losing its recording. With
``best_effort`` nothing slows the session: failures are counted and logged, and events are
dropped rather than held without bound.

Example::

    rec = Recorder(js, subject, header, required=True, metrics=m, log=log, failed=on_fail)
    if not await rec.open():
        ...  # refuse the session
    rec.output(b"hello")
    await rec.close()
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
from nats.js import JetStreamContext

from meshssh_common.logs import BoundLogger
from meshssh_common.recording_stream import MAX_CHUNK, SIZE_HEADER
from meshssh_sshd.metrics import SshdMetrics

__all__ = [
    "HIGH_WATER",
    "LOST_TEXT",
    "MAX_BACKLOG",
    "UNAVAILABLE_TEXT",
    "Recorder",
    "asciicast_header",
]

MAX_BACKLOG = 8 * 2**20  # bytes of events not yet acked before the recorder gives up
HIGH_WATER = 2 * 2**20  # required: above this backlog the program's output is paused...
LOW_WATER = 512 * 1024  # ...until it is below this
_PIECE = 16 * 1024  # output is cut into pieces of at most this many bytes per event
_FLUSH_EVERY = 0.2  # seconds between chunks while output trickles
_ACK_TIMEOUT = 2.0
_WINDOW = 4  # chunks awaiting their acks at once

UNAVAILABLE_TEXT = (
    "meshssh: this session must be recorded, and the recording service did not answer; "
    "try again later or ask an admin"
)
LOST_TEXT = "meshssh: session closed: it must be recorded, and its recording stopped being stored"

_encode = msgspec.json.Encoder().encode


class Recorder:
    """Records one session; call :meth:`open` first and :meth:`close` at the end."""

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        header: dict[str, Any],
        *,
        required: bool,
        record_input: bool,
        metrics: SshdMetrics,
        log: BoundLogger,
        failed: Callable[[str], None],
        pressure: Callable[[bool], None] | None = None,
    ) -> None:
        self._js = js
        self._pressure = pressure
        self._pressing = False
        self._subject = subject
        self._header = header
        self._required = required
        self._record_input = record_input
        self._metrics = metrics
        self._log = log
        self._failed = failed
        self._started = time.monotonic()
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._broken = False
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        self.bytes_stored = 0
        self._offset = 0  # bytes handed to the stream so far (SIZE_HEADER)

    @property
    def mode(self) -> str:
        """``required`` or ``best_effort``."""
        return "required" if self._required else "best_effort"

    async def open(self) -> bool:
        """Publish the header and wait for its ack; start the publishing task.

        Returns:
            False when the header was not stored: a ``required`` session must not start. A
            ``best_effort`` recorder goes on without storing anything.
        """
        self._started = time.monotonic()
        self._header["timestamp"] = int(time.time())
        ok = await self._publish(_encode(self._header) + b"\n")
        if not ok:
            self._broken = True
            self._metrics.recordings.labels(mode=self.mode, result="unavailable").inc()
            return False
        self._metrics.recordings.labels(mode=self.mode, result="started").inc()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="recorder")
        return True

    # -- events (never block, never raise) ---------------------------------------------------

    def output(self, data: bytes) -> None:
        """Output the client saw (stdout, stderr, or the PTY)."""
        self._text("o", self._out, data)

    def input(self, data: bytes) -> None:
        """Input the client sent (only with ``record_input``)."""
        if self._record_input:
            self._text("i", self._in, data)

    def resize(self, cols: int, rows: int) -> None:
        """A terminal size change."""
        self._event("r", f"{cols}x{rows}")

    def _text(self, code: str, decoder: codecs.IncrementalDecoder, data: bytes) -> None:
        for at in range(0, len(data), _PIECE):
            text = decoder.decode(data[at : at + _PIECE])
            if text:
                self._event(code, text)

    def _event(self, code: str, text: str) -> None:
        if self._broken or self._closing:
            return
        line = _encode([round(time.monotonic() - self._started, 6), code, text]) + b"\n"
        if self._size + len(line) > MAX_BACKLOG:
            self._overflow(len(line))
            return
        self._lines.append(line)
        self._size += len(line)
        if self._size >= MAX_CHUNK // 2:
            self._wake.set()
        if self._required and self._size > HIGH_WATER and not self._pressing:
            self._press(True)

    def _press(self, on: bool) -> None:
        self._pressing = on
        if self._pressure is not None:
            self._pressure(on)

    def _overflow(self, size: int) -> None:
        self._dropped += size
        self._metrics.recording_bytes.labels(result="dropped").inc(size)
        if self._required:
            self._fail("backlog")

    # -- publishing --------------------------------------------------------------------------

    async def _publish(self, chunk: bytes) -> bool:
        # Runs up to the first await as its task starts, so offsets follow the chunks' order.
        self._offset += len(chunk)
        headers = {SIZE_HEADER: str(self._offset)}
        try:
            await self._js.publish(self._subject, chunk, timeout=_ACK_TIMEOUT, headers=headers)
        except (nats.errors.Error, TimeoutError) as e:
            self._metrics.recording_bytes.labels(result="failed").inc(len(chunk))
            self._log.warning(
                "recording chunk not stored",
                extra={"subject": self._subject, "mode": self.mode, "error": repr(e)},
            )
            return False
        self.bytes_stored += len(chunk)
        self._metrics.recording_bytes.labels(result="stored").inc(len(chunk))
        return True

    def _take(self) -> bytes:
        out: list[bytes] = []
        size = 0
        while self._lines and (not out or size + len(self._lines[0]) <= MAX_CHUNK):
            line = self._lines.popleft()
            out.append(line)
            size += len(line)
        self._size -= size
        return b"".join(out)

    async def _run(self) -> None:
        """Publish chunks in order, up to :data:`_WINDOW` awaiting their acks at once."""
        inflight: deque[asyncio.Task[bool]] = deque()
        loop = asyncio.get_running_loop()
        try:
            while not self._broken:
                if not self._lines:
                    if inflight:
                        await self._settle(inflight.popleft())
                        continue
                    if self._closing:
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_FLUSH_EVERY):
                            await self._wake.wait()
                    self._wake.clear()
                    continue
                # Tasks write their message as they start, so the stream gets them in order.
                inflight.append(loop.create_task(self._publish(self._take())))
                await asyncio.sleep(0)
                if len(inflight) >= _WINDOW:
                    await self._settle(inflight.popleft())
        finally:
            for task in inflight:
                task.cancel()

    async def _settle(self, task: asyncio.Task[bool]) -> None:
        if not await task:
            self._fail("lost")
        elif self._pressing and self._size < LOW_WATER:
            self._press(False)

    def _fail(self, reason: str) -> None:
        if self._broken:
            return
        self._metrics.recordings.labels(mode=self.mode, result=reason).inc()
        if not self._required:
            # best effort: keep trying with later chunks, drop what piles up (counted)
            return
        self._broken = True
        self._lines.clear()
        self._size = 0
        self._failed(reason)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (for at most ``timeout`` s) and stop."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._log.warning("recording not fully stored at the end of the session")
        if self._dropped:
            self._log.warning("recording events dropped", extra={"bytes": self._dropped})


def asciicast_header(
    *,
    cols: int,
    rows: int,
    term: str,
    session_id: str,
    peer_id: str,
    user: str,
    local_user: str,
    source: str,
    source_peer: str,
    command: str,
) -> dict[str, Any]:
    """The asciicast v2 header of a session (``timestamp`` is set when recording starts)."""
    return {
        "version": 2,
        "width": cols or 80,
        "height": rows or 24,
        "timestamp": 0,
        "env": {"TERM": term, "SHELL": ""},
        "title": f"{local_user}@{peer_id} {command}".strip(),
        "meshssh": {
            "session": session_id,
            "peer": peer_id,
            "user": user,
            "local_user": local_user,
            "source": source,
            "source_peer": source_peer,
            "command": command,
        },
    }
