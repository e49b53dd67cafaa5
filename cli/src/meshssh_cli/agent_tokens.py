"""The agent's in-memory JWT cache, one slot per local OS user (keyed by the caller's uid).

SPEC §9: a token is cached for ``--ssh-jwt-cache-ttl`` seconds, never beyond the token's own
``exp`` nor the servers' max token age (``iat`` + max age from the map's JWT config), and is
lost when the agent stops (never written to disk). A TTL of 0 caches nothing. NetBird keeps a
single slot for the whole machine and hands it to any caller (netbird-ssh.md §4); here a uid
only ever sees its own slot.

This is the agent's minimal cache. The authn work (issue 4) brings a fuller per-user cache
(with a single-flight device flow); it plugs in through :class:`TokenStore`.

Example::

    cache = UidTokenCache(ttl=300, max_age=lambda: 600)
    cache.put(1000, jwt)          # -> CachedToken or None (not cached)
    cache.get(1000)               # -> CachedToken or None (absent or expired)
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CachedToken", "TokenStore", "UidTokenCache", "token_times"]


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A cached token and the wall-clock time it stops being handed out."""

    token: str
    expires_at: float


class TokenStore(Protocol):
    """What the agent socket needs from a token cache."""

    def get(self, uid: int) -> CachedToken | None:
        """The caller's token, or None."""

    def put(self, uid: int, token: str) -> CachedToken | None:
        """Cache the caller's token; None when it is not cached (TTL 0, or already stale)."""

    def drop(self, uid: int) -> None:
        """Forget the caller's token."""


def token_times(token: str) -> tuple[float | None, float | None]:
    """``(exp, iat)`` read from a JWT's payload without verifying it (None when absent).

    Only bounds the cache lifetime; servers validate tokens properly.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(claims, dict):
        return None, None
    exp, iat = claims.get("exp"), claims.get("iat")
    return (
        float(exp) if isinstance(exp, int | float) else None,
        float(iat) if isinstance(iat, int | float) else None,
    )


class UidTokenCache:
    """A dict of uid → token with the lifetime bounds of the module docstring.

    Args:
        ttl: ``--ssh-jwt-cache-ttl`` in seconds (0: never cache).
        max_age: the servers' current max token age in seconds (from the map).
        clock: wall-clock seconds (tests pass their own).
    """

    def __init__(
        self,
        ttl: float,
        max_age: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.max_age = max_age
        self.clock = clock
        self._slots: dict[int, CachedToken] = {}

    def get(self, uid: int) -> CachedToken | None:
        """The caller's token while it is still fresh."""
        entry = self._slots.get(uid)
        if entry is not None and entry.expires_at <= self.clock():
            del self._slots[uid]
            return None
        return entry

    def put(self, uid: int, token: str) -> CachedToken | None:
        """Cache ``token`` for ``uid`` until the earliest of TTL, ``exp`` and ``iat``+max age."""
        if self.ttl <= 0:
            return None
        now = self.clock()
        bounds = [now + self.ttl]
        exp, iat = token_times(token)
        if exp is not None:
            bounds.append(exp)
        if iat is not None:
            bounds.append(iat + self.max_age())
        expires = min(bounds)
        if expires <= now:
            self._slots.pop(uid, None)
            return None
        entry = CachedToken(token, expires)
        self._slots[uid] = entry
        return entry

    def drop(self, uid: int) -> None:
        """Forget the caller's token."""
        self._slots.pop(uid, None)

    def clear(self) -> None:
        """Forget every token (the agent is stopping)."""
        self._slots.clear()
