"""Limits on device-flow user-code guesses (RFC 8628 §5.1/§6.1), per source and overall.

A user code is 8 letters from a 20-letter alphabet (20^8 ≈ 2.6e10, about 34 bits). Every
lookup of a code that names no pending grant counts as a miss, per client address and for the
whole replica; once either budget for the window is spent, codes are not looked up at all
(the page says to wait). With the defaults (10 misses per address and 200 overall per
5 minutes) an attacker tries at most 57,600 codes a day per replica: against 1,000 codes
pending at once, a chance of about 2e-3 a day of hitting one; and a hit only lets the
attacker approve someone else's login under the attacker's own identity, which the confirm
page (what the code approves: server, local user, source) makes visible.

Memory is bounded: at most ``max_sources`` addresses are tracked (the stalest dropped first).

Example::

    attempts = CodeAttempts(per_source=10, overall=200, window=300)
    if attempts.blocked("10.0.0.7"): ...
    attempts.missed("10.0.0.7")
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["CodeAttempts"]


class CodeAttempts:
    """Sliding-window counts of unknown user codes, per address and overall."""

    def __init__(
        self,
        *,
        per_source: int = 10,
        overall: int = 200,
        window: float = 300.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_source = per_source
        self.overall = overall
        self.window = window
        self._max = max_sources
        self._clock = clock
        self._sources: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=overall)

    def _trim(self, times: deque[float], now: float) -> int:
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times)

    def blocked(self, address: str) -> bool:
        """True while ``address``, or everyone together, has used up the window's misses."""
        now = self._clock()
        if self._trim(self._all, now) >= self.overall:
            return True
        times = self._sources.get(address)
        if times is None:
            return False
        if self._trim(times, now) == 0:
            del self._sources[address]
            return False
        return len(times) >= self.per_source

    def missed(self, address: str) -> None:
        """Count one lookup of a code that names no pending grant."""
        now = self._clock()
        self._all.append(now)
        self._trim(self._all, now)
        times = self._sources.get(address)
        if times is None:
            times = self._sources[address] = deque(maxlen=self.per_source)
        times.append(now)
        self._sources.move_to_end(address)
        while len(self._sources) > self._max:
            self._sources.popitem(last=False)
