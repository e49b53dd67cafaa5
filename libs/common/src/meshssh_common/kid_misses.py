"""Key ids that were just looked for and not found, remembered for a while (bounded).

Both ends of a JWKS refresh use it (sshd before it asks authn, authn before it asks the
identity provider): a ``kid`` that a fresh fetch did not bring is refused at once for a
while, without another fetch, while every other ``kid`` still gets its own. An attacker may
send endless random ids, so the memory is bounded twice: each entry expires, and past
``capacity`` the entry closest to expiry is dropped first (dropping one only lets that id
ask again, which the global rate cap still bounds).

Example::

    misses = KidMisses(capacity=4096)
    if misses.remaining("k9") > 0:
        refuse()
    misses.record("k9", ttl=30.0)
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

__all__ = ["KidMisses"]


class KidMisses:
    """``kid`` -> when its miss expires; at most ``capacity`` entries, expired ones pruned."""

    def __init__(self, capacity: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._clock = clock
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (expiry, kid); stale pairs are skipped

    def __len__(self) -> int:
        self._prune(self._clock())
        return len(self._until)

    def remaining(self, kid: str) -> float:
        """Seconds ``kid`` is still refused for (0.0 when it may be looked up again)."""
        until = self._until.get(kid)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[kid]
            return 0.0
        return left

    def record(self, kid: str, ttl: float) -> None:
        """Remember that ``kid`` was not found, for ``ttl`` seconds (a longer earlier stays)."""
        if ttl <= 0:
            return
        now = self._clock()
        self._prune(now)
        until = now + ttl
        if self._until.get(kid, 0.0) >= until:
            return
        self._until[kid] = until
        heapq.heappush(self._heap, (until, kid))
        while len(self._until) > self._capacity:
            self._pop()
        if len(self._heap) > 4 * self._capacity:  # many re-records: drop the stale pairs
            self._heap = [(u, k) for k, u in self._until.items()]
            heapq.heapify(self._heap)

    def forget(self, kid: str) -> None:
        """``kid`` was found after all: stop refusing it."""
        self._until.pop(kid, None)

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._pop()

    def _pop(self) -> None:
        until, kid = heapq.heappop(self._heap)
        if self._until.get(kid) == until:
            del self._until[kid]
