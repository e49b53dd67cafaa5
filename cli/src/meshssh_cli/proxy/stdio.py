"""An asyncio transport over the ProxyCommand's stdin and stdout, for asyncssh's server side.

OpenSSH runs ``meshssh ssh proxy`` with two pipes (its stdin and stdout). asyncssh runs a
connection over any transport a "tunnel" hands it, so :class:`StdioTunnel` gives
:func:`asyncssh.connect_reverse` a duplex transport made of a read pipe and a write pipe,
without copying bytes through a socketpair.

Example::

    conn = await asyncssh.connect_reverse("stdio", 0, tunnel=StdioTunnel(0, 1), ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from collections.abc import Callable
from typing import Any, cast

__all__ = ["StdioTunnel", "stdio_usable"]


def stdio_usable(*fds: int) -> bool:
    """True when every fd is a pipe, a socket or a terminal (what OpenSSH gives a ProxyCommand).

    Regular files and ``/dev/null`` cannot be watched by the event loop.
    """
    for fd in fds:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)):
            return False
    return True


_PIPE_SIZE = 1024 * 1024


def _widen_pipe(fd: int) -> None:
    """Give a pipe 1 MiB instead of 64 KiB, so SSH packets flow without a context switch each.

    Linux only, and only up to /proc/sys/fs/pipe-max-size; otherwise the pipe stays as it is.
    """
    if stat.S_ISFIFO(os.fstat(fd).st_mode) and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class _ReadSide(asyncio.Protocol):
    """Feeds stdin to the connection; bytes read before it is attached are kept."""

    def __init__(self) -> None:
        self.target: asyncio.Protocol | None = None
        self.early: list[bytes] = []
        self.eof = False

    def attach(self, target: asyncio.Protocol) -> None:
        self.target = target
        for chunk in self.early:
            target.data_received(chunk)
        self.early.clear()
        if self.eof:
            target.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.target is None:
            self.early.append(data)
        else:
            self.target.data_received(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.target is not None:
            self.target.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.target is not None and exc is not None:
            self.target.connection_lost(exc)


class _WriteSide(asyncio.BaseProtocol):
    """Reports a broken stdout (OpenSSH went away) to the connection."""

    def __init__(self, target: asyncio.Protocol) -> None:
        self.target = target

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.target.connection_lost(exc)


class _StdioTransport(asyncio.Transport):
    """Reads from one pipe transport and writes to another."""

    def __init__(self, reader: asyncio.ReadTransport, writer: asyncio.WriteTransport) -> None:
        super().__init__({"peername": ("stdio", 0), "sockname": ("stdio", 0)})
        self._reader = reader
        self._writer = writer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def write_eof(self) -> None:
        self._writer.close()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._writer.get_write_buffer_size()

    def pause_reading(self) -> None:
        self._reader.pause_reading()

    def resume_reading(self) -> None:
        self._reader.resume_reading()

    def is_reading(self) -> bool:
        return self._reader.is_reading()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def abort(self) -> None:
        self._reader.close()
        if not self._writer.is_closing():  # aborting a closed pipe transport raises
            cast(Any, self._writer).abort()


class StdioTunnel:
    """An asyncssh tunnel whose one "connection" is this process's stdin and stdout."""

    def __init__(self, stdin: int = 0, stdout: int = 1) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._transport: _StdioTransport | None = None

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[asyncio.Transport, Any]:
        """Build the connection object and start it on the pipes (asyncssh calls this once)."""
        loop = asyncio.get_running_loop()
        for fd in (self._stdin, self._stdout):
            _widen_pipe(fd)
        conn = session_factory()
        read_side = _ReadSide()
        reader, _ = await loop.connect_read_pipe(
            lambda: read_side, os.fdopen(self._stdin, "rb", buffering=0, closefd=False)
        )
        writer, _ = await loop.connect_write_pipe(
            lambda: _WriteSide(conn), os.fdopen(self._stdout, "wb", buffering=0, closefd=False)
        )
        self._transport = _StdioTransport(reader, writer)
        conn.connection_made(self._transport)
        read_side.attach(conn)
        return self._transport, conn

    def close(self) -> None:
        """Close both pipes."""
        if self._transport is not None:
            self._transport.close()
