"""Talking to the local agent over its Unix socket.

``meshssh down`` and ``status`` use it, and so will ``login``, ``ssh`` and ``ssh proxy``, which
fetch the caller's cached token here.

Example::

    async with AgentClient.connect(state_dir) as agent:
        status = await agent.status(detail=True)
        cached = await agent.token_get()
        per_peer = await agent.token_exchange("server-7")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec

from meshssh_common.errors import (
    ConfigError,
    Denied,
    MeshError,
    Unavailable,
    error_for_code,
)
from meshssh_common.unix_paths import reachable
from meshssh_common.wire import PeerFlags
from meshssh_common.wire.agent import (
    MAX_LINE,
    SOCKET_NAME,
    AgentStatus,
    ConfigureRequest,
    DownRequest,
    ErrorReply,
    OkReply,
    PeerTokenRequest,
    PromptReply,
    Reply,
    Request,
    StatusReply,
    StatusRequest,
    TokenDropRequest,
    TokenGetRequest,
    TokenPutRequest,
    TokenReply,
)

__all__ = ["AgentClient", "NotRunning", "socket_path"]

_DECODER = msgspec.json.Decoder(Reply)
_ENCODER = msgspec.json.Encoder()


class NotRunning(Unavailable):
    """No agent answers on this state dir's socket."""


def socket_path(state_dir: Path) -> Path:
    """Where the agent of ``state_dir`` listens."""
    return state_dir / SOCKET_NAME


class AgentClient:
    """One connection to the agent; requests are answered in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, state_dir: Path, *, timeout: float = 5.0) -> AsyncIterator[AgentClient]:
        """Connect to the agent of ``state_dir``.

        Raises:
            NotRunning: nothing listens there.
        """
        path = socket_path(state_dir)
        try:
            async with asyncio.timeout(timeout):
                with reachable(path) as name:
                    reader, writer = await asyncio.open_unix_connection(name, limit=MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NotRunning(f"no agent is running for {state_dir} (no {path})") from e
        except (OSError, TimeoutError) as e:
            raise NotRunning(f"cannot reach the agent at {path}: {e}") from e
        client = cls(reader, writer)
        try:
            yield client
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def call(
        self,
        request: Request,
        *,
        timeout: float = 10.0,
        on_prompt: Callable[[PromptReply], None] | None = None,
    ) -> Reply:
        """Send one request and return its final reply (``on_prompt`` gets prompt lines).

        Raises:
            Denied: the agent refused the caller.
            BadRequest: the agent did not understand the request.
            Unavailable: the agent could not reach what it needed (authn for an exchange).
            RateLimited: authn refused an exchange as too frequent.
            RemoteError: any other error reply.
            Unavailable: the connection broke or the agent did not answer in time.
        """
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    self._writer.write(_ENCODER.encode(request) + b"\n")
                    await self._writer.drain()
                    while True:
                        reply = self._decode(await self._reader.readline())
                        if not isinstance(reply, PromptReply):
                            break
                        if on_prompt is not None:
                            on_prompt(reply)
            except (OSError, TimeoutError) as e:
                raise Unavailable(f"the agent did not answer: {e!r}") from e
        if isinstance(reply, ErrorReply):
            raise _error(reply)
        return reply

    @staticmethod
    def _decode(line: bytes) -> Reply:
        if not line:
            raise Unavailable("the agent closed the connection")
        try:
            reply: Reply = _DECODER.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
            raise Unavailable(f"unexpected answer from the agent: {e}") from e
        return reply

    async def status(self, *, detail: bool = False) -> AgentStatus:
        """The agent's state."""
        reply = await self.call(StatusRequest(detail=detail))
        assert isinstance(reply, StatusReply)
        return reply.status

    async def down(self) -> str:
        """Ask the agent to stop (it answers first, then stops)."""
        reply = await self.call(DownRequest())
        assert isinstance(reply, OkReply)
        return reply.message

    async def configure(self, flags: PeerFlags) -> str:
        """Change the local flags of the running agent."""
        reply = await self.call(ConfigureRequest(flags=flags), timeout=30)
        assert isinstance(reply, OkReply)
        return reply.message

    async def token_get(
        self,
        *,
        login: bool = False,
        on_prompt: Callable[[PromptReply], None] | None = None,
        timeout: float = 10.0,
    ) -> TokenReply:
        """The caller's cached token (``token`` empty when none); ``login`` signs in if needed.

        Args:
            login: when nothing is cached, run (or join) the device flow in the agent.
            on_prompt: shows the URL and code of that flow to the user.
            timeout: seconds to wait (a login needs as long as the user takes).
        """
        reply = await self.call(TokenGetRequest(login=login), timeout=timeout, on_prompt=on_prompt)
        assert isinstance(reply, TokenReply)
        return reply

    async def token_exchange(
        self,
        target_peer: str,
        *,
        on_prompt: Callable[[PromptReply], None] | None = None,
        timeout: float = 10.0,
    ) -> TokenReply:
        """A per-peer token for one connection to ``target_peer`` (the agent signs in if needed).

        Args:
            target_peer: the target's peer id (from the map).
            on_prompt: shows the URL and code of a login to the user.
            timeout: seconds to wait (a login needs as long as the user takes).
        """
        request = PeerTokenRequest(target_peer=target_peer)
        reply = await self.call(request, timeout=timeout, on_prompt=on_prompt)
        assert isinstance(reply, TokenReply)
        return reply

    async def token_put(self, token: str) -> TokenReply:
        """Cache the caller's token; ``cached`` says whether it was kept."""
        reply = await self.call(TokenPutRequest(token=token))
        assert isinstance(reply, TokenReply)
        return reply

    async def token_drop(self) -> None:
        """Forget the caller's token."""
        await self.call(TokenDropRequest())


def _error(reply: ErrorReply) -> MeshError:
    if reply.code == Denied.code:
        return Denied(reply.message, public=reply.message)
    if reply.code == ConfigError.code:
        return ConfigError("agent", reply.message)
    return error_for_code(reply.code, reply.message)  # bad_request, unavailable, rate_limited...
