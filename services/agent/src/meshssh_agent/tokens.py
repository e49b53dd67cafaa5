"""The agent's JWT cache: per local OS user, in memory only, one device flow at a time (SPEC §9).

The agent's socket server learns the caller's uid (``SO_PEERCRED``) and calls
``await cache.get(uid)``; ``meshssh login`` uses :class:`TokenCache` in its own process when no
agent runs. Nothing is ever written to disk, so a restart forgets every token.

Rules:

- an entry lives for ``ttl`` seconds (0 = never cached), and never past the token's ``exp``
  nor ``iat + max_token_age``, each less ``clock_skew`` so that a handed-out token is still
  good when the server checks it (NetBird's cache ignored ``exp`` and max age, #5917);
- single flight: callers for the same uid that find no entry share one fetch (one browser
  flow), even with ``ttl`` 0; the fetch is cancelled when its last caller gives up, and a
  caller arriving while it unwinds starts a new one (it never inherits the cancellation);
- a failed fetch is not cached; the next caller starts a new one;
- the fetch announces its URL and code through ``notify``; every caller waiting on it gets
  them through its ``on_prompt`` (late joiners get them replayed), so each of several
  connections can show the user what to do while one browser flow runs.

The agent adds (:class:`AgentTokenCache`):

- the fetch: a device flow against the provider the management plane names
  (``GET <management-url>/api/v1/auth/config``, :mod:`meshssh_common.oidc_device`); the agent
  is a daemon and opens no browser, so the URL and code go to every waiting caller;
- :meth:`AgentTokenCache.put`: keep a token the caller obtained elsewhere (same bounds);
- the servers' limits (max token age, clock skew) follow the peer's map.

Example::

    cache = AgentTokenCache(device_flow_fetch("http://127.0.0.1:8080"), ttl=300)
    token = await cache.get(os.getuid(), on_prompt=show_url_and_code)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from meshssh_common.errors import ConfigError
from meshssh_common.oidc_device import DeviceAuthorization, DeviceFlowClient, fetch_client_config
from meshssh_common.wire import JwtConfig

__all__ = [
    "AgentTokenCache",
    "CachedToken",
    "Fetch",
    "Notify",
    "OnPrompt",
    "TokenCache",
    "device_flow_fetch",
    "token_times",
]

OnPrompt = Callable[[DeviceAuthorization], None]
Notify = OnPrompt
Fetch = Callable[[int, Notify], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A token and until when this cache hands it out."""

    token: str
    valid_until: float


@dataclass(slots=True)
class _Flight:
    task: asyncio.Task[str] | None = None
    waiters: int = 0
    prompt: DeviceAuthorization | None = None
    listeners: list[OnPrompt] = field(default_factory=list)

    def notify(self, prompt: DeviceAuthorization) -> None:
        self.prompt = prompt
        for listener in list(self.listeners):
            listener(prompt)


def token_times(token: str) -> tuple[float | None, float | None]:
    """``(iat, exp)`` read from a JWT's payload without verifying it (None when absent).

    The cache only needs the times; the server verifies the signature.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        payload: Any = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None

    def num(name: str) -> float | None:
        value = payload.get(name)
        return float(value) if isinstance(value, int | float) else None

    return num("iat"), num("exp")


class TokenCache:
    """Tokens per local uid, bounded by TTL, ``exp`` and max age; one fetch per uid at a time."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float,
        max_token_age: float = 600.0,
        clock_skew: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self.ttl = max(0.0, ttl)
        self.max_token_age = max_token_age
        self.clock_skew = clock_skew
        self._clock = clock
        self._entries: dict[int, CachedToken] = {}
        self._flights: dict[int, _Flight] = {}

    def valid_until(self, token: str, now: float) -> float:
        """Until when ``token`` may be handed out from the cache (≤ now: not at all)."""
        bounds = [now + self.ttl]
        iat, exp = token_times(token)
        if exp is not None:
            bounds.append(exp - self.clock_skew)
        if iat is not None:
            bounds.append(iat + self.max_token_age - self.clock_skew)
        return min(bounds)

    def peek(self, uid: int) -> CachedToken | None:
        """The cached entry of ``uid`` if it is still good now (no fetch)."""
        entry = self._entries.get(uid)
        if entry is None:
            return None
        if self._clock() >= entry.valid_until:
            del self._entries[uid]
            return None
        return entry

    async def get(self, uid: int, *, on_prompt: OnPrompt | None = None) -> str:
        """A token for ``uid``: the cached one, or the result of one shared fetch.

        Args:
            uid: the local OS user asking (the agent reads it from the socket's credentials).
            on_prompt: called with the flow's URL and code when a fetch needs the user
                (at once if the shared fetch already announced them).

        Raises:
            Exception: whatever the fetch raised (shared by every caller waiting on it).
        """
        entry = self.peek(uid)
        if entry is not None:
            return entry.token
        flight = self._flights.get(uid)
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.create_task(self._run(uid, flight), name=f"token-fetch-{uid}")
            self._flights[uid] = flight
        task = flight.task
        assert task is not None
        flight.waiters += 1
        if on_prompt is not None:
            flight.listeners.append(on_prompt)
            if flight.prompt is not None:
                on_prompt(flight.prompt)
        try:
            return await asyncio.shield(task)
        finally:
            flight.waiters -= 1
            if on_prompt is not None:
                flight.listeners.remove(on_prompt)
            if flight.waiters == 0 and not task.done():
                task.cancel()  # nobody wants it any more: stop the browser flow
                # ...and forget it now: a caller arriving while it unwinds starts a fresh
                # flow instead of sharing this one's cancellation.
                if self._flights.get(uid) is flight:
                    del self._flights[uid]

    async def _run(self, uid: int, flight: _Flight) -> str:
        try:
            token = await self._fetch(uid, flight.notify)
            now = self._clock()
            until = self.valid_until(token, now)
            if self.ttl > 0 and until > now:
                self._entries[uid] = CachedToken(token, until)
            return token
        finally:
            if self._flights.get(uid) is flight:  # not a newer flight of the same uid
                del self._flights[uid]

    def invalidate(self, uid: int) -> None:
        """Forget ``uid``'s token (e.g. a server rejected it)."""
        self._entries.pop(uid, None)

    def clear(self) -> None:
        """Forget every token."""
        self._entries.clear()

    async def aclose(self) -> None:
        """Forget every token and cancel the fetches in flight (agent shutdown)."""
        self.clear()
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class AgentTokenCache(TokenCache):
    """:class:`TokenCache` plus :meth:`put` and limits taken from the map."""

    def put(self, uid: int, token: str) -> CachedToken | None:
        """Cache ``token`` for ``uid``; None when it is not kept (TTL 0, or already too old)."""
        now = self._clock()
        until = self.valid_until(token, now)
        if self.ttl <= 0 or until <= now:
            self.invalidate(uid)
            return None
        entry = CachedToken(token, until)
        self._entries[uid] = entry
        return entry

    def follow(self, jwt: JwtConfig | None) -> None:
        """Use the servers' current limits (from the map's JWT config)."""
        if jwt is not None:
            self.max_token_age = float(jwt.max_token_age)
            self.clock_skew = float(jwt.clock_skew)


def device_flow_fetch(management_url: str, *, timeout: float = 15.0) -> Fetch:
    """The cache's fetch: one device flow with the provider management names.

    Raises (from the fetch):
        ConfigError: the agent was started without ``--management-url``.
        MeshError: the management plane or the provider refused or did not answer.
    """

    async def fetch(uid: int, notify: Notify) -> str:
        if not management_url:
            raise ConfigError(
                "--management-url", "the agent needs it to run logins (meshssh up --management-url)"
            )
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as http:
            config = await fetch_client_config(http, management_url)
            flow = DeviceFlowClient(config, http)
            auth = await flow.start()
            notify(auth)
            return (await flow.wait(auth)).token

    return fetch
