"""The agent's Unix socket server: the local CLI's way in (protocol in ``agent_protocol``).

Security, in order of what a caller meets:
1. the socket file is 0666 inside a 0711 state dir: any local user may connect;
2. the caller's uid comes from the kernel (``SO_PEERCRED``), read once per connection;
3. token calls use that uid as the key, so each user reaches only their own cached token;
4. ``down`` and ``configure`` are refused unless the uid is 0 or the agent's own;
5. a line longer than ``MAX_LINE``, or nothing for ``IDLE_TIMEOUT`` seconds, closes the
   connection; at most ``MAX_CLIENTS`` connections are served at once.

Example::

    server = AgentSocketServer(path, handler, log=log)
    await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from meshssh_common.errors import ConfigError, MeshError
from meshssh_common.logs import BoundLogger
from meshssh_common.unix_paths import reachable
from meshssh_common.wire.agent import MAX_LINE, ErrorReply, Reply, Request

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CLIENTS",
    "AgentSocketServer",
    "Caller",
    "Handler",
    "Send",
]

IDLE_TIMEOUT = 60.0
MAX_CLIENTS = 64
_DECODER = msgspec.json.Decoder(Request)
_ENCODER = msgspec.json.Encoder()


class Caller(msgspec.Struct, frozen=True):
    """Who is on the other end, as the kernel says."""

    pid: int
    uid: int
    gid: int

    def may_control(self) -> bool:
        """Root and the agent's own user may stop or reconfigure it."""
        return self.uid in (0, os.geteuid())


Send = Callable[[Reply], Awaitable[None]]
Handler = Callable[[Request, Caller, Send], Awaitable[Reply]]
"""Answers one request; ``send`` writes intermediate lines before the returned final one."""


def _peer(sock: socket.socket) -> Caller:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(pid, uid, gid)


class AgentSocketServer:
    """Serves requests on the agent socket with ``handler`` (see the module docstring).

    ``long_running`` names the requests that may take minutes (a login): while one runs, the
    connection is watched, and a caller that hangs up cancels it.
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        log: BoundLogger,
        long_running: Callable[[Request], bool] = lambda _: False,
    ) -> None:
        self.path = path
        self.handler = handler
        self.long_running = long_running
        self.log = log.bind(socket=str(path))
        self._server: asyncio.AbstractServer | None = None
        self._slots = asyncio.Semaphore(MAX_CLIENTS)
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve.

        Raises:
            ConfigError: the socket cannot be bound.
        """
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket: the lock proved no agent owns it
        try:
            with reachable(self.path) as name:
                self._server = await asyncio.start_unix_server(
                    self._serve, path=name, limit=MAX_LINE
                )
            os.chmod(self.path, 0o666)
        except OSError as e:
            raise ConfigError("--state-dir", f"cannot serve {self.path}: {e}") from e

    async def stop(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            self._writers.add(writer)
            try:
                caller = _peer(writer.get_extra_info("socket"))
                await self._loop(reader, writer, caller)
            except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                pass
            except asyncio.CancelledError:
                # The agent is stopping. Ending normally keeps asyncio's stream callback from
                # logging a traceback for the cancelled handler (Python 3.11), which used to
                # push the agent's one-line reason out of what `meshssh up` shows.
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

    async def _loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, caller: Caller
    ) -> None:
        carried = b""  # a byte read while watching for a hang-up belongs to the next line
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    line = carried + await reader.readline()
            except ValueError:  # longer than MAX_LINE: refuse and hang up
                await self._send(writer, ErrorReply(code="bad_request", message="line too long"))
                return
            carried = b""
            if not line:
                return
            try:
                request = _DECODER.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
                await self._send(
                    writer, ErrorReply(code="bad_request", message=f"bad request: {e}")
                )
                continue
            handling = asyncio.ensure_future(self._handle(request, caller, writer))
            if self.long_running(request):
                # A long request (a login) ends when its caller hangs up. Short ones are
                # answered even to a client that half-closed after sending (socat).
                watch = asyncio.ensure_future(reader.read(1))
                await asyncio.wait({handling, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not handling.done() and watch.result() == b"":
                    handling.cancel()
                    await asyncio.gather(handling, return_exceptions=True)
                    return
                if watch.done():
                    carried = watch.result()
                else:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)
            await self._send(writer, await handling)

    async def _handle(
        self, request: Request, caller: Caller, writer: asyncio.StreamWriter
    ) -> Reply:
        async def send(reply: Reply) -> None:
            await self._send(writer, reply)

        try:
            return await self.handler(request, caller, send)
        except MeshError as e:
            return ErrorReply(code=e.code, message=e.public)
        except Exception:
            self.log.exception("agent socket request failed")
            return ErrorReply(code="internal", message="internal error; see the log")

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        writer.write(_ENCODER.encode(reply) + b"\n")
        await writer.drain()
