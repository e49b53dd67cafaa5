"""How many browser terminals may be open: per user and per gateway (issue 20 limits).

A terminal holds a :class:`Slot` from just after its ticket was redeemed (the user is known
then) until it ends, whether it got as far as a shell or not: a user cannot open more than
``--max-sessions-per-user`` at once by racing logins. The whole gateway holds at most
``--max-sessions``. Counting is in-process (one event loop, no lock needed); each replica of
the gateway counts its own.

Example::

    limits = SessionLimits(per_user=5, total=200)
    with limits.take("alice") as slot:    # raises LimitReached
        ...
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from meshssh_common.errors import Denied

__all__ = ["LimitReached", "SessionLimits"]


class LimitReached(Denied):
    """A limit is reached; ``per_user`` says which."""

    def __init__(self, *, per_user: bool, limit: int) -> None:
        if per_user:
            public = (
                f"you already have {limit} terminals open through this gateway; "
                "close one and try again"
            )
        else:
            public = f"this gateway has its maximum of {limit} terminals open; try again later"
        super().__init__(public, public=public)
        self.per_user = per_user


class SessionLimits:
    """The open terminals of this gateway process, by user."""

    def __init__(self, *, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        """Terminals open (or opening) now."""
        return sum(self._open.values())

    def full(self) -> bool:
        """Whether the gateway-wide limit is reached (checked before any work)."""
        return self.open >= self.total

    def of(self, user: str) -> int:
        """Terminals ``user`` has open (or opening)."""
        return self._open[user]

    @contextlib.contextmanager
    def take(self, user: str) -> Iterator[None]:
        """Hold one slot for ``user`` while inside.

        Raises:
            LimitReached: the user's, or the gateway's, limit is reached.
        """
        if self.full():
            raise LimitReached(per_user=False, limit=self.total)
        if self._open[user] >= self.per_user:
            raise LimitReached(per_user=True, limit=self.per_user)
        self._open[user] += 1
        try:
            yield
        finally:
            self._open[user] -= 1
            if self._open[user] <= 0:
                del self._open[user]
