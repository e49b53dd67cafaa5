"""What the agent answers on its socket: status, down, configure, the per-uid tokens, exchanges.

Each request is checked against the kernel-reported caller (``SO_PEERCRED``, see
:mod:`meshssh_agent.control.server`):

| op | root and the agent's own user | any other local user |
|---|---|---|
| ``status`` | everything | everything but ``nats_url`` (the bus is not theirs to reach) |
| ``down``, ``configure`` | allowed | refused (``denied``) |
| ``token-get``/``-put``/``-drop`` | their own slot | their own slot |
| ``token-exchange`` | their own IdP token, exchanged | their own IdP token, exchanged |

``token-exchange`` gets the caller's IdP token as ``token-get`` with ``login`` does, then trades
it at authn (:mod:`meshssh_common.token_exchange`) for a per-peer token, which is never cached. A
refusal of the IdP token by authn drops it from the cache (the next call signs in afresh).

The handler knows the agent only through :class:`Controlled` (no import of the agent itself),
and counts every request by op and outcome, token lookups by hit or miss, and exchanges by
outcome (with their duration).

Example::

    server = AgentSocketServer(path, AgentRequests(agent, metrics, log=log).handle, log=log)
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Protocol

import msgspec

from meshssh_agent.control.server import Caller, Send
from meshssh_agent.metrics import AgentMetrics, ExchangeOutcome, SocketOutcome, TokenLookup
from meshssh_agent.tokens import AgentTokenCache
from meshssh_common.errors import BadRequest, Denied, MeshError, RateLimited, Unavailable
from meshssh_common.logs import BoundLogger
from meshssh_common.oidc_device import DeviceAuthorization
from meshssh_common.wire import PeerFlags
from meshssh_common.wire.agent import (
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
from meshssh_common.wire.authn import TokenExchangeReply

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

    async def exchange(self, idp_token: str, target_peer: str) -> TokenExchangeReply:
        """Trade ``idp_token`` at authn for a per-peer token (see ``token_exchange``)."""
        ...


class AgentRequests:
    """The socket handler of one agent (see the module docstring)."""

    def __init__(self, agent: Controlled, metrics: AgentMetrics, *, log: BoundLogger) -> None:
        self.agent = agent
        self.log = log
        self._requests = metrics.socket_requests
        self._lookups = metrics.token_lookups
        self._exchanges = metrics.exchanges
        self._exchange_seconds = metrics.exchange_seconds

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
            case PeerTokenRequest(target_peer=target):
                return await self._exchange(caller, send, target)
            case TokenPutRequest(token=token):
                put = self.agent.tokens.put(caller.uid, token)
                if put is None:
                    return TokenReply(cached=False)
                return TokenReply(expires_at=put.valid_until, cached=True)
            case TokenDropRequest():
                self.agent.tokens.invalidate(caller.uid)
                return OkReply(message="forgotten")
        return ErrorReply(code="bad_request", message="unknown request")

    async def _exchange(self, caller: Caller, send: Send, target: str) -> Reply:
        """The caller's IdP token (cached, or from a login), traded for a per-peer token."""
        entry = self.agent.tokens.peek(caller.uid)
        self._lookups.labels(result=TokenLookup.HIT if entry else TokenLookup.MISS).inc()
        if entry is not None:
            idp_token = entry.token
        else:
            login = await self._login(caller, send)
            if not isinstance(login, TokenReply) or not login.token:
                return login
            idp_token = login.token
        started = time.perf_counter()
        try:
            reply = await self.agent.exchange(idp_token, target)
        except MeshError as e:
            outcome = ExchangeOutcome.ERROR
            if isinstance(e, Denied | BadRequest | RateLimited):
                outcome = ExchangeOutcome.REFUSED
            elif isinstance(e, Unavailable):
                outcome = ExchangeOutcome.UNAVAILABLE
            self._exchanges.labels(outcome=outcome).inc()
            if isinstance(e, Denied):
                self.agent.tokens.invalidate(caller.uid)  # useless now: sign in afresh
            self.log.warning(
                "token exchange failed",
                extra={"uid": caller.uid, "target": target, "error": str(e)},
            )
            return ErrorReply(code=e.code, message=f"token exchange for {target}: {e.public}")
        self._exchange_seconds.observe(time.perf_counter() - started)
        self._exchanges.labels(outcome=ExchangeOutcome.OK).inc()
        expires_at = time.time() + reply.expires_in if reply.expires_in else 0.0
        return TokenReply(token=reply.access_token, expires_at=expires_at, cached=False)

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
