"""The session recorder: raw events in batches, to the ``MESHSSH_RECORDINGS`` stream.

A recording is one message per batch on the session's subject
``meshssh.rec.v1.<peer>.<session>``: first the asciicast v2 header line (the user, local user,
peer, source, start time and terminal size), then batches of events in the format of
:mod:`meshssh_common.recording_format` (output as the client saw it, resizes, and input only
when the rule says ``record_input``), zstd-compressed when that shrinks them. Readers get
the asciicast v2 file back (:func:`~meshssh_common.recording_stream.read_recording`).
Each message carries the header ``Meshssh-Rec-Bytes``: the recording's stored bytes up to and
including it, so a reader learns a recording's stored size from its last message.

The session's hot path only appends a 16-byte head and its output to the open batch, one
buffer (no JSON; copying a read there costs less than holding on to it: the read's own
memory is reused while it is still in the cache, and the batch is written in order). One
task, woken by a batch's first event, seals a batch when it holds a message's worth
(:data:`MAX_CHUNK`, or up to 2 MiB while the output compresses at least 8 times) or when its
first event waited :data:`_FLUSH_EVERY`, compresses it into one zstd frame (on the loop when
the output shrinks 10 times or more or no other batch waits behind it, else in a worker
thread) and publishes it, up to :data:`_WINDOW`
batches awaiting their acks at once. With
``required`` the session starts only once the header is acked, and it ends (``failed`` is
called once) when a publish is not acked or the backlog outgrows :data:`MAX_BACKLOG`; above
:data:`HIGH_WATER` buffered bytes it asks the session to stop reading the program's output
(``pressure(True)``) until the stream caught up, so a fast program runs at the stream's pace
instead of losing its recording. With ``best_effort`` nothing slows the session: failures are
counted and logged, and events are dropped rather than held without bound.

Example::

    rec = Recorder(js, subject, header, required=True, metrics=m, log=log, failed=on_fail)
    if not await rec.open():
        ...  # refuse the session
    rec.output(b"hello")
    await rec.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import nats.errors
from nats.js import JetStreamContext

from meshssh_common.logs import BoundLogger
from meshssh_common.recording_format import EVENT_HEAD, EVENT_PIECE, EVENTS_MAGIC, pack_chunk
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

MAX_BACKLOG = 16 * 2**20  # bytes of events not yet published before the recorder gives up
HIGH_WATER = 4 * 2**20  # required: above this backlog the program's output is paused...
LOW_WATER = 1 * 2**20  # ...until it is below this
_BIG = 2 * 2**20  # a batch's size while the output compresses at least 8 times
_FLUSH_EVERY = 0.2  # seconds an event waits at most for its batch to fill
_ACK_TIMEOUT = 2.0
_WINDOW = 8  # batches awaiting their acks at once...
_WINDOW_BYTES = 8 * 2**20  # ...holding at most this many bytes of messages (as stored)
_PACKING = 2  # batches being compressed at once, in worker threads
_MAGIC = len(EVENTS_MAGIC)

UNAVAILABLE_TEXT = (
    "meshssh: this session must be recorded, and the recording service did not answer; "
    "try again later or ask an admin"
)
LOST_TEXT = "meshssh: session closed: it must be recorded, and its recording stopped being stored"

_encode = msgspec.json.Encoder().encode


_Packed = tuple[list[tuple[bytes, int]], int]  # messages with their batch bytes, next limit
_HEAD = EVENT_HEAD.pack
_HEAD_SIZE = EVENT_HEAD.size
_CODE = {"o": b"o", "i": b"i", "r": b"r"}
_executor: ThreadPoolExecutor | None = None


def _packers() -> ThreadPoolExecutor:
    """The recorders' own threads (not the loop's default executor, which logins use)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_PACKING, thread_name_prefix="recorder")
    return _executor


def _pack(batch: bytearray) -> _Packed:
    """``batch`` as messages of at most :data:`MAX_CHUNK`, and the next batches' size.

    The next batches are sized so that they fill about 3/4 of a message once compressed (up
    to :data:`_BIG`): few publishes and acks for a fast program. A batch whose compressed
    form does not fit a message after all is cut between events and each piece compressed on
    its own; the batches after it are :data:`MAX_CHUNK` until the output shrinks again.
    """
    size = len(batch)
    message = pack_chunk(batch)
    if len(message) <= MAX_CHUNK:
        room = MAX_CHUNK * 3 * size // (4 * len(message))
        return [(message, size - _MAGIC)], min(_BIG, max(MAX_CHUNK, room))
    out: list[tuple[bytes, int]] = []
    view = memoryview(batch)
    start = at = _MAGIC
    while at < len(batch):  # cut between events: each is under MAX_CHUNK
        end = at + EVENT_HEAD.size + EVENT_HEAD.unpack_from(batch, at)[2]
        if end - start + _MAGIC > MAX_CHUNK and at > start:
            out.append((pack_chunk(EVENTS_MAGIC + view[start:at]), at - start))
            start = at
        at = end
    out.append((pack_chunk(EVENTS_MAGIC + view[start:]), len(batch) - start))
    return out, MAX_CHUNK


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
        self._batch = bytearray(EVENTS_MAGIC)  # the open batch: heads and the data itself
        self._open = 0  # its bytes of events
        self._sealed: deque[bytearray] = deque()  # full batches, oldest first
        self._size = 0  # bytes of events in all batches
        self._oldest = 0.0  # monotonic time of the open batch's first event
        self._limit = MAX_CHUNK  # a batch's size: _BIG while the output compresses well
        self._wake = asyncio.Event()
        self._closing = False
        self._broken = False
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None
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
        self._event("o", data)

    def input(self, data: bytes) -> None:
        """Input the client sent (only with ``record_input``)."""
        if self._record_input:
            self._event("i", data)

    def resize(self, cols: int, rows: int) -> None:
        """A terminal size change."""
        self._event("r", f"{cols}x{rows}".encode())

    def _event(self, code: str, data: bytes) -> None:
        # The session's hot path: a head and the data, appended to the open batch.
        if self._broken or self._closing or not data:
            return
        size = len(data)
        if self._size + size + _HEAD_SIZE * (1 + size // EVENT_PIECE) > MAX_BACKLOG:
            self._overflow(size)
            return
        at = time.monotonic() - self._started
        tag = _CODE[code]
        if size <= EVENT_PIECE:
            self._append(at, tag, data, size)
        else:
            view = memoryview(data)
            for start in range(0, size, EVENT_PIECE):
                piece = view[start : start + EVENT_PIECE]
                self._append(at, tag, piece, len(piece))
        if self._sealed or self._size >= HIGH_WATER:
            self._wake.set()
            if self._required and self._size > HIGH_WATER and not self._pressing:
                self._press(True)

    def _append(self, at: float, tag: bytes, data: bytes | memoryview, size: int) -> None:
        """One event (at most :data:`EVENT_PIECE` bytes) into the open batch."""
        if self._open and self._open + _HEAD_SIZE + size > self._limit:
            self._seal()
        if not self._open:
            self._opened()
        batch = self._batch
        batch += _HEAD(at, tag, size)
        batch += data
        self._open += _HEAD_SIZE + size
        self._size += _HEAD_SIZE + size

    def _opened(self) -> None:
        """The first event of a batch: the publishing task sleeps until it is due."""
        self._oldest = time.monotonic()
        self._wake.set()

    def _seal(self) -> None:
        """Close the open batch: the next event opens a new one."""
        self._sealed.append(self._batch)
        self._batch, self._open = bytearray(EVENTS_MAGIC), 0

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

    def _take(self) -> bytearray | None:
        """The oldest full batch and its bytes; the open one when old, big enough or last."""
        if not self._sealed:
            if not self._open:
                return None
            wait = self._oldest + _FLUSH_EVERY - time.monotonic()
            if self._size < HIGH_WATER and not self._closing and wait > 0:
                return None
            self._seal()
        batch = self._sealed.popleft()
        self._size -= len(batch) - _MAGIC
        return batch

    async def _run(self) -> None:
        """Compress batches and publish them in order.

        A batch is compressed on the loop when that is quick (see below), else in a worker
        thread: up to :data:`_PACKING` at once (zstd releases the GIL, so the session's output
        goes on meanwhile). Up to :data:`_WINDOW` batches await their acks.
        """
        packing: deque[asyncio.Future[_Packed]] = deque()
        inflight: deque[tuple[asyncio.Task[bool], int]] = deque()
        loop = asyncio.get_running_loop()
        try:
            while not self._broken:
                while inflight and inflight[0][0].done():
                    await self._settle(inflight.popleft())
                if packing and packing[0].done():
                    messages, self._limit = packing.popleft().result()
                    for message, _ in messages:
                        # Tasks write their message as they start: the stream gets them in
                        # order. The window counts what they hold: the messages themselves.
                        inflight.append((loop.create_task(self._publish(message)), len(message)))
                    await asyncio.sleep(0)
                    while len(inflight) > _WINDOW or (
                        len(inflight) > 1 and sum(size for _, size in inflight) > _WINDOW_BYTES
                    ):
                        await self._settle(inflight.popleft())
                    continue
                batch = self._take() if len(packing) < _PACKING else None
                if batch is not None and (self._limit >= _BIG or not (packing or self._sealed)):
                    # On the loop (no thread hop, the batch still in this core's cache) when
                    # it is quick: output that shrank 10 times or more, or a batch that no
                    # other waits behind (the output is slower than compression, as a
                    # terminal's is). Output that outpaces it is compressed in threads.
                    packing.append(loop.create_future())
                    packing[-1].set_result(_pack(batch))
                elif batch is not None:
                    packing.append(loop.run_in_executor(_packers(), _pack, batch))
                elif packing:
                    await asyncio.wait([packing[0]])
                elif inflight:
                    await self._settle(inflight.popleft())
                elif self._closing:
                    return
                else:
                    await self._sleep()
        finally:
            for task, _ in inflight:
                task.cancel()

    async def _sleep(self) -> None:
        """Until a batch is full, the open one is due, or :meth:`close` (idle: no timer)."""
        wait: float | None = None
        if self._open:
            wait = max(0.0, self._oldest + _FLUSH_EVERY - time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()
        self._wake.clear()

    async def _settle(self, sent: tuple[asyncio.Task[bool], int]) -> None:
        if not await sent[0]:
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
        self._sealed.clear()
        self._batch, self._open, self._size = bytearray(EVENTS_MAGIC), 0, 0
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
