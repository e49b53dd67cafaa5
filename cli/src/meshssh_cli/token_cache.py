"""The client-side JWT cache: per local OS user, in memory only, one browser flow at a time.

Built to live in the peer agent (SPEC §9): the agent's Unix-socket server learns the caller's
uid (``SO_PEERCRED``) and calls ``await cache.get(uid)``; ``meshssh login`` uses the same class
in its own process until the agent hosts it. Nothing is ever written to disk, so a restart
forgets every token.

Rules:

- an entry lives for ``ttl`` seconds (0 = never cached), and never past the token's ``exp``
  nor ``iat + max_token_age``, each less ``clock_skew`` so that a handed-out token is still
  good when the server checks it (NetBird's cache ignored ``exp`` and max age, #5917);
- single flight: callers for the same uid that find no entry share one fetch (one browser
  flow), even with ``ttl`` 0; the fetch is cancelled when its last caller gives up;
- a failed fetch is not cached; the next caller starts a new one.

Example::

    cache = TokenCache(run_device_flow, ttl=300, max_token_age=600, clock_skew=60)
    token = await cache.get(os.getuid())
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CachedToken", "TokenCache", "token_times"]

Fetch = Callable[[int], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A token and until when this cache hands it out."""

    token: str
    valid_until: float


@dataclass(slots=True)
class _Flight:
    task: asyncio.Task[str]
    waiters: int = 0


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

    async def get(self, uid: int) -> str:
        """A token for ``uid``: the cached one, or the result of one shared fetch.

        Raises:
            Exception: whatever the fetch raised (shared by every caller waiting on it).
        """
        entry = self.peek(uid)
        if entry is not None:
            return entry.token
        flight = self._flights.get(uid)
        if flight is None:
            flight = _Flight(asyncio.create_task(self._run(uid), name=f"token-fetch-{uid}"))
            self._flights[uid] = flight
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody wants it any more: stop the browser flow

    async def _run(self, uid: int) -> str:
        try:
            token = await self._fetch(uid)
            now = self._clock()
            until = self.valid_until(token, now)
            if self.ttl > 0 and until > now:
                self._entries[uid] = CachedToken(token, until)
            return token
        finally:
            self._flights.pop(uid, None)

    def invalidate(self, uid: int) -> None:
        """Forget ``uid``'s token (e.g. a server rejected it)."""
        self._entries.pop(uid, None)

    def clear(self) -> None:
        """Forget every token."""
        self._entries.clear()

    async def aclose(self) -> None:
        """Forget every token and cancel the fetches in flight (agent shutdown)."""
        self.clear()
        flights = list(self._flights.values())
        for flight in flights:
            flight.task.cancel()
        for flight in flights:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flight.task
