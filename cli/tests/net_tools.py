"""Small real-network helpers for the client tests: an echo server, ports, background tools,
and reading a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import signal
import socket
import struct
import termios
from collections.abc import AsyncIterator, Sequence


@contextlib.asynccontextmanager
async def echo_server(host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A TCP server that upper-cases what it receives; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (tools that cannot take port 0 need one)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def echo_through(host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Connect (retrying until the listener is up), send, half-close, read the reply."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        try:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            return await reader.read()
        except OSError as e:
            # The forwarder refused and closed the connection: a reset, a broken pipe, or
            # (when it closed before our half-close) "not connected".
            if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                return b""
            raise
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def background(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a tool until the block ends, then terminate it (kill after 3 s).

    Its output pipes are read to the end afterwards: an ``ssh`` leaves them open in its
    ProxyCommand until that sees EOF and exits, and asyncio closes the process only then.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(3):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        async with asyncio.timeout(15):
            await proc.communicate()


async def read_line_matching(stream: asyncio.StreamReader, pattern: str, timeout: float) -> str:
    """Read lines until one matches ``pattern``; returns the first group."""
    async with asyncio.timeout(timeout):
        while line := await stream.readline():
            if m := re.search(pattern, line.decode(errors="replace")):
                return m.group(1)
    raise AssertionError(f"no line matching {pattern!r}")


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's size."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyReader:
    """Collects everything a program writes to the master side of a pseudo-terminal."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.text = ""
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self.master)
        self.text += data.decode(errors="replace")
        self._changed.set()

    async def wait_for(self, needle: str, timeout: float = 15.0) -> None:
        """Wait until ``needle`` has been written."""
        async with asyncio.timeout(timeout):
            while needle not in self.text:
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self._loop.remove_reader(self.master)
        os.close(self.master)


@contextlib.asynccontextmanager
async def in_pty(
    argv: Sequence[str], rows: int = 24, cols: int = 80, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, PtyReader]]:
    """Run ``argv`` with a pseudo-terminal of ``rows`` x ``cols`` as stdin/stdout/stderr."""
    master, slave = os.openpty()
    set_winsize(slave, rows, cols)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    os.close(slave)
    reader = PtyReader(master)
    try:
        yield proc, reader
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader.close()
