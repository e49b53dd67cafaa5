"""What the agent answers on its socket: status, down, configure and the per-uid tokens.

Each request is checked against the kernel-reported caller (``SO_PEERCRED``, see
:mod:`meshssh_agent.control.server`):

| op | root and the agent's own user | any other local user |
|---|---|---|
| ``status`` | everything | everything but ``nats_url`` (the bus is not theirs to reach) |
| ``down``, ``configure`` | allowed | refused (``denied``) |
| ``token-get``/``-put``/``-drop`` | their own slot | their own slot |

The handler knows the agent only through :class:`Controlled` (no import of the agent itself),
and counts every request by op and outcome, and token lookups by hit or miss.

Example::

    server = AgentSocketServer(path, AgentRequests(agent, metrics, log=log).handle, log=log)
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

import msgspec

from meshssh_agent.control.server import Caller, Send
from meshssh_agent.metrics import AgentMetrics, SocketOutcome, TokenLookup
from meshssh_agent.tokens import AgentTokenCache
from meshssh_common.errors import MeshError
from meshssh_common.logs import BoundLogger
from meshssh_common.oidc_device import DeviceAuthorization
from meshssh_common.wire import PeerFlags
from meshssh_common.wire.agent import (
    AgentStatus,
    ConfigureRequest,
    DownRequest,
    ErrorReply,
    OkReply,
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

__all__ = ["AgentRequests", "Controlled"]


class Controlled(Protocol):
    """What the socket may see and do of the agent."""

    @property
    def tokens(self) -> AgentTokenCache:
        """The per-uid JWT cache."""
        ...

    def status(self, *, detail: bool) -> AgentStatus:
        """The agent's state; ``detail`` adds children, peers and sessions."""
        ...

    def request_stop(self) -> None:
        """Stop the agent (``down``)."""
        ...

    async def reconfigure(self, flags: PeerFlags) -> int:
        """Apply new local flags; returns the map serial management reported."""
        ...


class AgentRequests:
    """The socket handler of one agent (see the module docstring)."""

    def __init__(self, agent: Controlled, metrics: AgentMetrics, *, log: BoundLogger) -> None:
        self.agent = agent
        self.log = log
        self._requests = metrics.socket_requests
        self._lookups = metrics.token_lookups

    async def handle(self, request: Request, caller: Caller, send: Send) -> Reply:
        """Answer one request from ``caller`` (``send`` writes intermediate lines)."""
        op = str(type(request).__struct_config__.tag)
        try:
            reply = await self._answer(request, caller, send)
        except asyncio.CancelledError:
            self._requests.labels(op=op, outcome=SocketOutcome.ABANDONED).inc()
            raise
        except Exception:
            self._requests.labels(op=op, outcome=SocketOutcome.ERROR).inc()
            raise
        if not isinstance(reply, ErrorReply):
            outcome = SocketOutcome.OK
        elif reply.code == "denied":
            outcome = SocketOutcome.DENIED
        else:
            outcome = SocketOutcome.ERROR
        self._requests.labels(op=op, outcome=outcome).inc()
        return reply

    async def _answer(self, request: Request, caller: Caller, send: Send) -> Reply:
        match request:
            case StatusRequest(detail=detail):
                status = self.agent.status(detail=detail)
                if not caller.may_control():
                    status = msgspec.structs.replace(status, nats_url="")
                return StatusReply(status=status)
            case DownRequest():
                if not caller.may_control():
                    return _denied(caller, "stop the agent")
                self.log.info("down requested", extra={"uid": caller.uid, "pid": caller.pid})
                self.agent.request_stop()
                return OkReply(message="stopping")
            case ConfigureRequest(flags=flags):
                if not caller.may_control():
                    return _denied(caller, "change the agent's flags")
                try:
                    serial = await self.agent.reconfigure(flags)
                except MeshError as e:
                    return ErrorReply(code=e.code, message=f"flags applied locally; {e.public}")
                return OkReply(message=f"flags updated (map serial {serial})")
            case TokenGetRequest(login=login):
                entry = self.agent.tokens.peek(caller.uid)
                result = TokenLookup.HIT if entry is not None else TokenLookup.MISS
                self._lookups.labels(result=result).inc()
                if entry is not None:
                    return TokenReply(token=entry.token, expires_at=entry.valid_until, cached=True)
                if not login:
                    return TokenReply()
                return await self._login(caller, send)
            case TokenPutRequest(token=token):
                put = self.agent.tokens.put(caller.uid, token)
                if put is None:
                    return TokenReply(cached=False)
                return TokenReply(expires_at=put.valid_until, cached=True)
            case TokenDropRequest():
                self.agent.tokens.invalidate(caller.uid)
                return OkReply(message="forgotten")
        return ErrorReply(code="bad_request", message="unknown request")

    async def _login(self, caller: Caller, send: Send) -> Reply:
        """Run or join the caller's device flow; the prompt goes out before the token."""
        prompts: list[asyncio.Future[None]] = []

        def on_prompt(auth: DeviceAuthorization) -> None:
            prompt = PromptReply(
                url=auth.verification_uri,
                code=auth.user_code,
                url_complete=auth.verification_uri_complete,
                expires_in=auth.expires_in,
            )
            prompts.append(asyncio.ensure_future(send(prompt)))

        self.log.info("login requested", extra={"uid": caller.uid, "pid": caller.pid})
        tokens = self.agent.tokens
        try:
            token = await tokens.get(caller.uid, on_prompt=on_prompt)
        except asyncio.CancelledError:
            self.log.info("login abandoned by its caller", extra={"uid": caller.uid})
            raise
        finally:
            await asyncio.gather(*prompts, return_exceptions=True)
        entry = tokens.peek(caller.uid)
        return TokenReply(
            token=token, expires_at=entry.valid_until if entry else 0.0, cached=entry is not None
        )


def _denied(caller: Caller, what: str) -> ErrorReply:
    return ErrorReply(
        code="denied",
        message=f"uid {caller.uid} may not {what}: only root or uid {os.geteuid()} may",
    )
