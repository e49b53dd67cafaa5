"""The idle and maximum-length clock of one session (``idle_timeout``, ``max_session``).

A session is idle when neither input nor output moved for ``idle_timeout`` seconds. The clock
holds one event-loop timer, re-armed only when it fires (``touch`` is a float store on the hot
path), so a limit is noticed within milliseconds of being reached. When a limit is reached the
clock calls ``expired(reason, text)`` once; the session shows the text and ends.

Example::

    clock = SessionClock(rules, expired=lambda reason, text: channel.end_by_limit(reason, text))
    clock.start()
    clock.touch()   # on every input and output
    clock.stop()    # when the session ends
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from meshssh_common.wire import SessionRules

__all__ = ["IDLE_TEXT", "MAX_TEXT", "SessionClock"]

IDLE_TEXT = "meshssh: session closed after {n} s without input or output (idle timeout)"
MAX_TEXT = "meshssh: session closed: it reached its maximum length of {n} s"


class SessionClock:
    """Calls ``expired`` when the session was idle too long or ran too long."""

    def __init__(
        self,
        rules: SessionRules,
        *,
        expired: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle = float(rules.idle_timeout)
        self._max = float(rules.max_session)
        self._expired = expired
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    @property
    def active(self) -> bool:
        """Whether any limit applies."""
        return self._idle > 0 or self._max > 0

    def touch(self) -> None:
        """Input or output moved: the session is not idle."""
        self._last = self._clock()

    def start(self) -> None:
        """Arm the timer (nothing when no limit applies)."""
        self._started = self._last = self._clock()
        if self.active and not self._done:
            self._arm()

    def stop(self) -> None:
        """Disarm for good."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> tuple[float, str, str]:
        candidates: list[tuple[float, str, str]] = []
        if self._idle > 0:
            n = int(self._idle)
            candidates.append((self._last + self._idle, "idle_timeout", IDLE_TEXT.format(n=n)))
        if self._max > 0:
            n = int(self._max)
            candidates.append((self._started + self._max, "max_session", MAX_TEXT.format(n=n)))
        return min(candidates)

    def _arm(self) -> None:
        at, _, _ = self._deadline()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - self._clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._done:
            return
        at, reason, text = self._deadline()
        if self._clock() >= at:
            self._done = True
            self._expired(reason, text)
            return
        self._arm()
