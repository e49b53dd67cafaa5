"""Forced JWKS refreshes (``jwks-refresh``): paced for the provider, throttled per ``kid``.

An SSH server that meets a ``kid`` it does not know asks here. The provider must not be
hammered by made-up ids, and a made-up id must never hold up a real one:

- a request whose kids are all published is answered at once, without a fetch;
- a ``kid`` that a fresh fetch did not bring is refused at once for ``kid_interval``
  (:class:`KidMisses`, bounded; the replica that fetched tells the others over
  ``AUTHN_JWKS_MISSED``);
- any other request waits for a fetch that starts after it arrived. At most one forced
  fetch starts per ``min_forced_interval`` across every replica (compare-and-set on the
  shared lease), and one fetch answers every request that was waiting when it started, in
  this replica or, through the lease's ``forced_done``, in any other. A request that cannot
  get a fetch within ``max_forced_wait`` is refused with a ``retry_after``.

While requests wait, one task per replica (the pacer) re-reads the lease every ``_POLL``
seconds, so a fetch by another replica is noticed that fast.

Example::

    refresher = JwksRefresher(mirror, timing, metrics=metrics, log=log)
    await add_endpoint(svc, "jwks-refresh", subjects.AUTHN_JWKS_REFRESH, JwksRefreshRequest,
                       refresher.refresh, metrics=m, log=log, concurrency=64)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.jwks_mirror import JwksMirror, MirrorTiming, key_ids
from meshssh_authn.key_sources import Fetched
from meshssh_common.errors import Unavailable
from meshssh_common.kid_misses import KidMisses
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import JwksRefreshReply, JwksRefreshRequest

__all__ = ["JwksRefresher"]

_POLL = 0.1  # while requests wait: how often the shared lease is re-read
_MAX_KIDS_REMEMBERED = 4096
_MAX_ANNOUNCED = 256  # the wire's limit per JwksMissed


@dataclass(frozen=True, slots=True)
class _Answer:
    """How a waiting request ended: its own replica's fetch, another's, or none."""

    outcome: Literal["fetched", "covered", "failed", "throttled"]
    fetched: Fetched | None = None
    retry_after: float = 0.0


@dataclass(eq=False)
class _Waiter:
    joined: float  # wall clock, comparable with the lease's times
    kids: frozenset[str]
    deadline: float  # monotonic
    done: asyncio.Future[_Answer]


class JwksRefresher:
    """Serves ``jwks-refresh`` for one replica."""

    def __init__(
        self,
        mirror: JwksMirror,
        timing: MirrorTiming,
        *,
        metrics: AuthnMetrics,
        log: BoundLogger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mirror = mirror
        self._timing = timing
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._misses = KidMisses(_MAX_KIDS_REMEMBERED)
        self._waiters: list[_Waiter] = []
        self._pacer: asyncio.Task[None] | None = None
        self.on_missed: Callable[[tuple[str, ...], float], Awaitable[None]] | None = None
        """Tells the other replicas which kids a forced fetch here did not find."""

    async def refresh(self, req: JwksRefreshRequest) -> JwksRefreshReply:
        """Answer from what is published, refuse a kid that just missed, or wait for a fetch.

        Raises:
            Unavailable: the fetch ran but the provider could not be read (the last good
                keys stay published).
        """
        wanted = {k for k in (req.kid, *req.kids) if k}
        known = await self._mirror.published_kids()
        missing = wanted - set(known)
        if wanted and not missing:
            self._count("known_kid")
            return JwksRefreshReply(fetched=False, key_ids=known)
        waits = [self._misses.remaining(k) for k in missing]
        if missing and all(w > 0 for w in waits):
            self._count("throttled_kid")
            return JwksRefreshReply(fetched=False, key_ids=known, retry_after=min(waits))
        answer = await self._wait_for_fetch(missing)
        if answer.outcome == "throttled":
            self._count("throttled_global")
            return JwksRefreshReply(
                fetched=False,
                key_ids=await self._mirror.published_kids(),
                retry_after=answer.retry_after,
            )
        if answer.outcome == "failed":
            raise Unavailable("the identity provider could not be read; last good keys kept")
        if answer.fetched is not None:
            got = key_ids(answer.fetched.keys)
        else:  # another replica's fetch, started after this request came, is published
            got = await self._mirror.published_kids()
            self.note_missed(sorted(missing - set(got)), self._timing.kid_interval)
        self._log.info(
            "forced JWKS refresh",
            extra={
                "kids": sorted(missing)[:8],
                "found": sorted(missing & set(got))[:8],
                "by": "this replica" if answer.fetched is not None else "another replica",
                "requester": req.requester[:64],
            },
        )
        return JwksRefreshReply(fetched=True, key_ids=got)

    def note_missed(self, kids: Sequence[str], ttl: float) -> None:
        """Refuse these kids without fetching for ``ttl`` seconds (a fetch did not bring them)."""
        for kid in kids:
            self._misses.record(kid, min(ttl, self._timing.kid_interval))

    async def close(self) -> None:
        """Stop the pacer; requests still waiting are answered as failed."""
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
        self._settle(lambda _w: True, _Answer("failed"))

    def _count(self, outcome: str) -> None:
        self._metrics.jwks_refreshes.labels(trigger="forced", outcome=outcome).inc()

    async def _wait_for_fetch(self, kids: set[str]) -> _Answer:
        waiter = _Waiter(
            joined=self._clock(),
            kids=frozenset(kids),
            deadline=time.monotonic() + self._timing.max_forced_wait,
            done=asyncio.get_running_loop().create_future(),
        )
        self._waiters.append(waiter)
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.create_task(self._pace())
        try:
            return await asyncio.shield(waiter.done)
        finally:
            if not waiter.done.done():  # the request itself was cancelled
                self._settle(lambda w: w is waiter, _Answer("failed"))

    def _take(self, which: Callable[[_Waiter], bool]) -> list[_Waiter]:
        taken = [w for w in self._waiters if which(w)]
        self._waiters = [w for w in self._waiters if not which(w)]
        return taken

    def _settle(self, which: Callable[[_Waiter], bool], answer: _Answer) -> None:
        _answer(self._take(which), answer)

    async def _pace(self) -> None:
        while self._waiters:
            try:
                await self._pace_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS away, a bad lease...: the waiters get an honest failure
                self._log.exception("forced JWKS refresh failed")
                self._settle(lambda _w: True, _Answer("failed"))

    async def _pace_once(self) -> None:
        entry, lease = await self._mirror.read_lease()
        done = lease.forced_done
        if done > 0:
            self._settle(lambda w: w.joined <= done, _Answer("covered"))
        # A request that joined just after another replica's fetch began is not covered by
        # it on paper, but once that fetch has published its kids it needs no fetch of its own.
        known = set(await self._mirror.published_kids())
        self._settle(lambda w: bool(w.kids) and w.kids <= known, _Answer("covered"))
        if not self._waiters:
            return
        interval = self._timing.min_forced_interval
        # A lease from a replica whose clock runs ahead holds up one interval at most.
        wait = min(lease.forced_at + interval - self._clock(), interval)
        running = lease.forced_at > done  # a fetch started and has not published yet
        now = time.monotonic()

        def hopeless(w: _Waiter) -> bool:
            if now >= w.deadline:
                return True
            covered_soon = running and lease.forced_at >= w.joined
            return not covered_soon and wait > 0 and now + wait > w.deadline

        self._settle(hopeless, _Answer("throttled", retry_after=max(wait, _POLL)))
        if not self._waiters:
            return
        if wait > 0:
            await asyncio.sleep(min(wait, _POLL))
            return
        started = await self._mirror.claim_forced(entry, lease)
        if not started:
            return  # another replica took the slot: its fetch will cover these
        batch = self._take(lambda w: w.joined <= started)
        try:
            fetched = await self._mirror.fetch_and_publish("forced", forced_at=started)
            if fetched is not None:
                wanted = frozenset().union(*(w.kids for w in batch))
                await self._note_fetched(wanted, set(key_ids(fetched.keys)))
                _answer(batch, _Answer("fetched", fetched))
        finally:
            _answer(batch, _Answer("failed"))  # those not answered above

    async def _note_fetched(self, wanted: frozenset[str], got: set[str]) -> None:
        """Remember (here and in the other replicas) the kids a fresh fetch did not bring."""
        for kid in wanted & got:
            self._misses.forget(kid)
        missed = sorted(wanted - got)[:_MAX_ANNOUNCED]
        if not missed:
            return
        self.note_missed(missed, self._timing.kid_interval)
        if self.on_missed is not None:
            try:
                await self.on_missed(tuple(missed), self._timing.kid_interval)
            except Exception as e:  # the others then fetch once more for them: no harm
                self._log.warning("could not tell the other replicas", extra={"error": str(e)})


def _answer(waiters: list[_Waiter], answer: _Answer) -> None:
    for waiter in waiters:
        if not waiter.done.done():
            waiter.done.set_result(answer)
