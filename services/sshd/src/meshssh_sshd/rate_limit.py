"""The per-source limit on authentication failures (SPEC §7, limits).

A source that failed ``limit`` times within ``window`` seconds is refused (at the gate and at
auth) until its oldest failure in the window ages out. Memory is bounded: at most
``max_sources`` sources are tracked; the least recently failing one is forgotten first.

Example::

    limiter = FailureLimiter(limit=10, window=60)
    limiter.record("100.64.0.7")
    limiter.blocked("100.64.0.7")   # False until the 10th failure
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

__all__ = ["FailureLimiter"]


class FailureLimiter:
    """Counts recent authentication failures per source address."""

    def __init__(self, *, limit: int, window: float, max_sources: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self._max = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def record(self, source: str, *, now: float | None = None) -> None:
        """Count one failure from ``source``."""
        now = time.monotonic() if now is None else now
        times = self._recent(source, now) or deque(maxlen=self.limit)
        times.append(now)
        self._failures[source] = times
        self._failures.move_to_end(source)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)

    def blocked(self, source: str, *, now: float | None = None) -> bool:
        """Whether ``source`` reached the limit within the window."""
        now = time.monotonic() if now is None else now
        times = self._recent(source, now)
        return times is not None and len(times) >= self.limit
