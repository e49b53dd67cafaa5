"""Slows password guessing on the login page: failures per user name and per client address.

In-memory per replica (N replicas allow N times the budget); the scrypt cost of every check
bounds the rate further. A locked name or address is refused without checking the password.

Example::

    throttle = LoginThrottle(max_failures=10, window=300)
    if throttle.blocked("alice", "10.0.0.7"): ...
    throttle.failed("alice", "10.0.0.7")
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]

_MAX_TRACKED = 10_000


class LoginThrottle:
    """Counts failed logins in a sliding window, keyed by user name and by address."""

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def blocked(self, username: str, address: str) -> bool:
        """True while either the name or the address has used up its failures."""
        now = self._clock()
        return any(self._recent(k, now) >= self._max for k in (f"u:{username}", f"a:{address}"))

    def failed(self, username: str, address: str) -> None:
        """Record one failed attempt."""
        now = self._clock()
        if len(self._failures) >= _MAX_TRACKED:
            # Bounded memory under a spray of names: forget the stalest entries.
            for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[:1000]:
                del self._failures[key]
        for key in (f"u:{username}", f"a:{address}"):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        """Forget the name's failures after a successful login."""
        self._failures.pop(f"u:{username}", None)
