"""Limits on authentication failures, with exponential backoff (SPEC §7, limits).

Failures are counted per **(source address, user)**: a source that fails ``limit`` times for
one user is refused for that user, first for ``base`` seconds, then twice as long with every
further failure, up to ``max_backoff``. Another source, or the same source for another user, is
not affected, so nobody can lock a user out for everyone. Failures are also counted per
**source** (any user), with a higher ``source_limit``: a source spraying many user names is
refused at the gate, before the SSH banner; connections that fail before authentication by
the client's doing (garbage, a wrong protocol, a login that timed out) are counted per source
too, ``limit`` of them refusing it at the gate (:meth:`FailureLimiter.penalize`, like
OpenSSH's ``PerSourcePenalties``). A key forgets its failures once it has been quiet
(no failure, not blocked) for ``window`` seconds; a successful login clears its
(source, user) key.

Memory is bounded: at most ``max_keys`` keys are tracked; the least recently failing one is
forgotten first.

Example::

    limiter = FailureLimiter(limit=10, window=60)
    limiter.record("100.64.0.7", "alice")
    limiter.blocked("100.64.0.7", "alice")   # False until the 10th failure
    limiter.source_blocked("100.64.0.7")     # False until the source_limit-th failure
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["FailureLimiter"]

_PREAUTH = "\0preauth"  # the key of pre-auth penalties (no user name contains NUL)


@dataclass(slots=True)
class _State:
    count: int = 0
    last: float = 0.0
    until: float = 0.0  # refused until then (monotonic seconds)


class FailureLimiter:
    """Counts recent authentication failures per (source, user) and per source."""

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        source_limit: int | None = None,
        base: float = 1.0,
        max_backoff: float = 900.0,
        max_keys: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.source_limit = source_limit if source_limit is not None else 5 * limit
        self.base = base
        self.max_backoff = max_backoff
        self._max = max_keys
        self._states: OrderedDict[tuple[str, str | None], _State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def _current(self, key: tuple[str, str | None], now: float) -> _State | None:
        state = self._states.get(key)
        if state is not None and now - max(state.last, state.until) > self.window:
            del self._states[key]
            return None
        return state

    def _fail(self, key: tuple[str, str | None], limit: int, now: float) -> None:
        state = self._current(key, now) or _State()
        state.count += 1
        state.last = now
        if state.count >= limit:
            steps = min(state.count - limit, 30)
            state.until = now + min(self.max_backoff, self.base * 2.0**steps)
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self._max:
            self._states.popitem(last=False)

    def record(self, source: str, user: str, *, now: float | None = None) -> None:
        """Count one failure from ``source`` for ``user``."""
        now = time.monotonic() if now is None else now
        self._fail((source, user), self.limit, now)
        self._fail((source, None), self.source_limit, now)

    def penalize(self, source: str, *, now: float | None = None) -> None:
        """Count a pre-auth failure of ``source`` that was the client's doing.

        ``limit`` of them refuse the source at the gate, with the same backoff.
        """
        now = time.monotonic() if now is None else now
        self._fail((source, _PREAUTH), self.limit, now)

    def succeeded(self, source: str, user: str) -> None:
        """A login from ``source`` as ``user`` succeeded: forget that key's failures."""
        self._states.pop((source, user), None)

    def blocked(self, source: str, user: str, *, now: float | None = None) -> bool:
        """Whether ``source`` is in backoff for ``user`` (or as a whole)."""
        now = time.monotonic() if now is None else now
        return self.source_blocked(source, now=now) or self._in_backoff((source, user), now)

    def source_blocked(self, source: str, *, now: float | None = None) -> bool:
        """Whether ``source`` is in backoff for every user (checked at the gate)."""
        now = time.monotonic() if now is None else now
        return self._in_backoff((source, None), now) or self._in_backoff((source, _PREAUTH), now)

    def _in_backoff(self, key: tuple[str, str | None], now: float) -> bool:
        state = self._current(key, now)
        return state is not None and now < state.until
