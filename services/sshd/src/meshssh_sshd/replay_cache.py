"""The ``jti`` of every per-peer token this server accepted, until the token is dead (SPEC §6).

A per-peer token is good for one login: its ``jti`` is remembered until ``exp`` plus the clock
skew, after which the validator refuses the token as expired anyway, so the entry can go.
Per-peer tokens live at most two minutes (:data:`meshssh_common.peer_tokens.MAX_LIFETIME`), so
entries never pile up for long; still, memory is bounded by a hard ``capacity``: when it is
full, a new ``jti`` is refused (``full``), never admitted by forgetting a live one. That fails
closed: a flood of valid tokens (which only authn can sign) delays logins for at most two
minutes but never re-opens a used token.

Example::

    cache = ReplayCache(capacity=100_000, skew=60)
    cache.use("Zm9v", exp=time.time() + 120)   # Use.FRESH; the second call: Use.REPLAYED
"""

from __future__ import annotations

import enum
import heapq
import time
from collections.abc import Callable

__all__ = ["ReplayCache", "Use"]


class Use(enum.Enum):
    """What :meth:`ReplayCache.use` made of a ``jti``."""

    FRESH = "fresh"  # first use: remembered now
    REPLAYED = "replayed"  # seen before and the token is still alive
    FULL = "full"  # not seen, but the cache is full: refused, not remembered


class ReplayCache:
    """``jti`` → when it may be forgotten; at most ``capacity`` entries."""

    def __init__(
        self, capacity: int, skew: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._skew = skew
        self._clock = clock
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (forget at, jti): the pruning order

    def __len__(self) -> int:
        self._prune(self._clock())
        return len(self._until)

    def use(self, jti: str, exp: float, *, skew: float | None = None) -> Use:
        """Record one use of ``jti`` (whose token expires at ``exp``, epoch seconds).

        Args:
            jti: the token's id.
            exp: the token's ``exp``.
            skew: the clock-skew leeway the validator applied (default: the cache's).
        """
        now = self._clock()
        self._prune(now)
        if jti in self._until:
            return Use.REPLAYED
        if len(self._until) >= self.capacity:
            return Use.FULL
        until = exp + (self._skew if skew is None else skew)
        self._until[jti] = until
        heapq.heappush(self._heap, (until, jti))
        return Use.FRESH

    def _prune(self, now: float) -> None:
        heap, until = self._heap, self._until
        while heap and heap[0][0] <= now:
            _, jti = heapq.heappop(heap)
            until.pop(jti, None)  # each jti is in the heap once: it is never re-added alive
