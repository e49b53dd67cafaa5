"""One relayed TCP connection: two asyncio Protocols joined back to back.

Protocols rather than streams: the probe in platform-notes §4 measured them at about twice the
raw throughput of a streams relay, and they give exact back-pressure: when one side's write
buffer passes its high-water mark, asyncio calls ``pause_writing`` on that side, which pauses
reading on the other side, so memory per connection stays bounded.

Lifecycle of a :class:`Pipe`:

1. the client side is accepted (``client`` protocol); the caller decides whether to dial;
2. until the upstream is connected, client bytes are kept in ``pending`` (bounded: reading is
   paused past ``PENDING_LIMIT``). The probe lost bytes here when they were not kept;
3. on upstream ``connection_made``, the prefix (the PROXY header) and every pending byte are
   written before any later byte, then bytes flow straight through;
4. half-close: an EOF from one side becomes ``write_eof`` on the other; the pipe closes when
   both sides have sent EOF, or as soon as either side's connection is lost.

Sockets get TCP_NODELAY (a relay must never add Nagle delay), and the client socket gets
TCP_QUICKACK after every read: OpenSSH does not set TCP_NODELAY for non-interactive sessions,
and a delayed ACK from the relay then costs it 40 ms per round trip (platform-notes §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["PENDING_LIMIT", "WRITE_HIGH_WATER", "Pipe"]

PENDING_LIMIT = 256 * 1024  # client bytes kept while the upstream connects
WRITE_HIGH_WATER = 512 * 1024  # per side; past it the other side stops being read
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _tune(transport: asyncio.BaseTransport) -> Any:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    return sock


class _End(asyncio.Protocol):
    """One side of a pipe; ``name`` is ``client`` or ``upstream``."""

    def __init__(self, pipe: Pipe, name: str, *, quickack: bool) -> None:
        self.pipe = pipe
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.closed = False
        self.bytes = 0
        self._sock: Any = None
        self._quickack = quickack and _QUICKACK is not None

    @property
    def other(self) -> _End:
        return self.pipe.upstream if self is self.pipe.client else self.pipe.client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._sock = _tune(transport)
        self.pipe.connected(self)

    def data_received(self, data: bytes) -> None:
        if self._quickack:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        self.bytes += len(data)
        self.pipe.forward(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.pipe.forward_eof(self)
        return True  # keep our own write side open: half-close

    def pause_writing(self) -> None:
        # Our write buffer is full: stop reading what would be written to it.
        other = self.other.transport
        if other is not None and not other.is_closing():
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.other.transport
        if other is not None and not other.is_closing():
            other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pipe.lost(self, exc)


class Pipe:
    """A client connection and its upstream; see the module docstring for the lifecycle.

    Args:
        on_accept: called with the pipe and the client transport as soon as the client is
            connected, before any byte is read; it closes the client or starts the dial (and
            may set ``prefix``).
        on_close: called once with the pipe when both sides are closed.
    """

    def __init__(
        self,
        *,
        on_accept: Callable[[Pipe, asyncio.Transport], None],
        on_close: Callable[[Pipe], None],
    ) -> None:
        self.prefix = b""  # bytes the upstream receives first (the PROXY header, or nothing)
        self._on_accept = on_accept
        self.client = _End(self, "client", quickack=True)
        self.upstream = _End(self, "upstream", quickack=False)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_eof = False
        self._on_close = on_close
        self._finished = False

    @property
    def bytes_in(self) -> int:
        """Bytes received from the client."""
        return self.client.bytes

    @property
    def bytes_out(self) -> int:
        """Bytes received from the upstream (sent to the client)."""
        return self.upstream.bytes

    def connected(self, end: _End) -> None:
        """A side's transport is up; for the upstream, flush the prefix and pending bytes."""
        assert end.transport is not None
        if end is self.client:
            self._on_accept(self, end.transport)
            return
        if self.client.closed:
            end.transport.abort()  # the client left while we were dialling
            return
        # Resume first: the write below may fill the upstream buffer, and the pause that
        # back-pressure then applies to the client must win.
        client = self.client.transport
        if client is not None and not client.is_closing():
            client.resume_reading()
        if self.prefix or self._pending:
            end.transport.write(self.prefix + b"".join(self._pending))
        self._pending.clear()
        self._pending_size = 0
        if self._pending_eof and end.transport.can_write_eof():
            end.transport.write_eof()

    def forward(self, source: _End, data: bytes) -> None:
        """Write ``data`` from ``source`` to the other side (or keep it until it connects)."""
        target = source.other.transport
        if target is None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= PENDING_LIMIT and source.transport is not None:
                source.transport.pause_reading()
            return
        if not target.is_closing():
            target.write(data)

    def forward_eof(self, source: _End) -> None:
        """``source`` will send nothing more: pass the EOF on, close when both are done."""
        target = source.other.transport
        if target is None:
            self._pending_eof = True
            return
        if source.other.eof:
            self.close()
        elif not target.is_closing() and target.can_write_eof():
            target.write_eof()

    def lost(self, end: _End, exc: Exception | None) -> None:
        """One side is gone: close the other (flushing what it still has to write)."""
        other = end.other.transport
        if other is not None and not other.is_closing():
            if exc is None:
                other.close()
            else:
                other.abort()
        if self.client.closed and (self.upstream.closed or self.upstream.transport is None):
            self._finish()

    def upstream_failed(self) -> None:
        """The upstream could not be reached: drop the client."""
        client = self.client.transport
        if client is not None and not client.is_closing():
            client.abort()
        if self.client.closed:
            self._finish()

    def close(self) -> None:
        """Close both sides after their buffered bytes are written."""
        for end in (self.client, self.upstream):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()

    def abort(self) -> None:
        """Drop both sides at once (relay shutdown)."""
        for end in (self.client, self.upstream):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.abort()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_close(self)
