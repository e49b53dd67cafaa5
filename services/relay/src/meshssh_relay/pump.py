"""One relayed TCP connection: two blocking copy loops, one thread per direction.

Why threads and not asyncio Protocols: through asyncio, every chunk costs an epoll round, a
callback, a fresh ``bytes`` and a write attempt; measured on SSH traffic (bench/
relay_overhead.py) that was about 1 s of CPU per GiB relayed, which on a two-core machine
where client and server are already CPU-bound cut throughput to ~0.6x of a direct connection.
A blocking loop does two system calls per chunk with the GIL released during both. On Linux
the bytes never enter Python: ``splice(2)`` moves them socket → pipe → socket.

Properties:
- the client is not read before the upstream is connected and the prefix (PROXY header) is
  written, so no byte can arrive "too early" (the byte loss platform-notes §4 describes is
  impossible by construction); the kernel's socket buffers hold them, bounded;
- bounded buffers and back-pressure: a direction holds at most one chunk (``CHUNK``, or the
  pipe) and blocks in ``send`` when the other side does not read, so its source stops being
  read;
- half-close: EOF from one side becomes ``shutdown(SHUT_WR)`` on the other; the pipe ends when
  both directions have ended; an error in either direction shuts both sockets down;
- TCP_NODELAY on both sockets; the client socket gets TCP_QUICKACK after small reads
  (handshake, auth, interactive traffic): OpenSSH does not set TCP_NODELAY for
  non-interactive sessions, and a delayed ACK then costs it 40 ms per round trip
  (platform-notes §4). Bulk reads skip it: nothing waits on those ACKs;
- fewer wake-ups in bulk: a profile of the relay under a 1 GiB upload (perf) showed a third
  of its CPU in context switches, one per SSH record (~32 KiB) the client sent. Once a
  direction has moved ``STREAM_BYTES`` in reads less than ``STREAM_GAP`` apart, a small read
  is followed by a ``COALESCE_SECONDS`` pause so that the next one carries what arrived
  meanwhile (relay CPU per GiB: 0.68-0.74 s → 0.54-0.62 s, bench/relay_overhead.py). A
  handshake or an interactive session never moves that much that fast, so its latency is
  unchanged (the setup ratio did not move).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable

__all__ = [
    "CHUNK",
    "COALESCE_BELOW",
    "COALESCE_SECONDS",
    "QUICKACK_BELOW",
    "STREAM_BYTES",
    "STREAM_GAP",
    "Pipe",
]

CHUNK = 256 * 1024  # bytes one direction holds at most (the pipe size with splice)
STREAM_GAP = 0.002  # reads closer together than this belong to one stream
STREAM_BYTES = 1024 * 1024  # a stream this long is bulk data: its small reads may wait
COALESCE_BELOW = 64 * 1024  # reads smaller than this, in bulk, are followed by a pause of
COALESCE_SECONDS = 0.0002  # this long, so the next read carries more
QUICKACK_BELOW = 16 * 1024  # re-arm TCP_QUICKACK after client reads smaller than this
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_SPLICE = hasattr(os, "splice")
_F_SETPIPE_SZ = 1031


def _tune(sock: socket.socket) -> None:
    sock.setblocking(True)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Direction:
    """Bytes from ``src`` to ``dst``; ``received``/``sent`` count them."""

    def __init__(self, src: socket.socket, dst: socket.socket, *, quickack: bool) -> None:
        self.src = src
        self.dst = dst
        self.quickack = quickack and _QUICKACK is not None
        self.received = 0
        self.sent = 0

    def run(self) -> None:
        """Copy until EOF (then half-close ``dst``); raises OSError on a broken socket."""
        if _SPLICE:
            self._splice()
        else:
            self._copy()
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)

    def _ack(self, n: int) -> None:
        if self.quickack and n < QUICKACK_BELOW:
            with contextlib.suppress(OSError):
                self.src.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[arg-type]

    def _copy(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := self.src.recv_into(buf):
            self.received += n
            self._ack(n)
            self.dst.sendall(view[:n])
            self.sent += n

    def _splice(self) -> None:
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, _F_SETPIPE_SZ, CHUNK)
            src, dst = self.src.fileno(), self.dst.fileno()
            streak, last = 0, 0.0
            while n := os.splice(src, w, CHUNK, flags=os.SPLICE_F_MOVE):
                self.received += n
                self._ack(n)
                now = time.monotonic()
                streak = streak + n if now - last < STREAM_GAP else n
                last = now
                small = n < COALESCE_BELOW
                while n:
                    moved = os.splice(r, dst, n, flags=os.SPLICE_F_MOVE)
                    self.sent += moved
                    n -= moved
                if small and streak >= STREAM_BYTES:
                    # A bulk stream arriving in small pieces: let the next ones gather
                    # instead of waking this thread for each (see the module docstring).
                    time.sleep(COALESCE_SECONDS)
        finally:
            os.close(r)
            os.close(w)


class Pipe:
    """A client connection and its connected upstream, relayed by two threads.

    Args:
        client: the accepted client socket (not read yet).
        upstream: the connected upstream socket (the prefix already written).
        on_close: called (from a pump thread) once both directions have ended.
    """

    def __init__(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[Pipe], None]
    ) -> None:
        _tune(client)
        _tune(upstream)
        self.client = client
        self.upstream = upstream
        self.inbound = _Direction(client, upstream, quickack=True)
        self.outbound = _Direction(upstream, client, quickack=False)
        self._on_close = on_close
        self._lock = threading.Lock()
        self._running = 2
        self._threads = [
            threading.Thread(target=self._run, args=(d,), name=f"relay-{n}", daemon=True)
            for n, d in (("in", self.inbound), ("out", self.outbound))
        ]

    @property
    def bytes_in(self) -> int:
        """Bytes received from the client."""
        return self.inbound.received

    @property
    def bytes_out(self) -> int:
        """Bytes received from the upstream (for the client)."""
        return self.outbound.received

    def start(self) -> None:
        """Start both directions."""
        for thread in self._threads:
            thread.start()

    def _run(self, direction: _Direction) -> None:
        try:
            direction.run()
        except OSError:
            self.abort()  # a reset or broken pipe ends both directions
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in (self.client, self.upstream):
                sock.close()
            self._on_close(self)

    def abort(self) -> None:
        """Shut both sockets down: both directions end at once (relay shutdown, errors)."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> None:
        """Wait for both directions to end (call after :meth:`abort`)."""
        for thread in self._threads:
            thread.join(timeout)
