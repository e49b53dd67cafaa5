"""The JWKS mirror: copies the provider's keys and the validation config into ``meshssh-jwks``.

SSH servers validate tokens only with what this writes, so it must never make things worse:

- a failed fetch changes nothing in KV (the last good keys stay published);
- the snapshot is rewritten only when its content changes (no churn for watchers);
- scheduled fetches follow the provider's ``Cache-Control`` (clamped), and a shared lease in
  KV (``meshssh-authn`` / ``jwks-fetch``) makes one replica fetch per period, not all;
- forced fetches (a server met an unknown ``kid``) are limited to one per
  ``min_forced_interval`` (a rate the provider can bear, 1 s by default) across every
  replica, by compare-and-set on the same lease. A request waits for the next slot (at most
  ``max_forced_wait``) rather than being refused, and every request of a replica waiting
  for the same slot shares one fetch;
- throttling per ``kid``: a ``kid`` that a forced fetch did not bring is refused at once,
  without a fetch, for ``kid_interval`` (memory bounded: :class:`KidMisses`), so a made-up
  ``kid`` never holds up another ``kid``'s refresh for more than one slot.

When the configured issuer differs from the one in KV (the operator switched providers), the
old snapshot is deleted at startup: servers fail closed until the new provider answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.key_sources import Fetched, KeySource
from meshssh_authn.provider_http import FetchError
from meshssh_common import subjects
from meshssh_common.errors import Conflict, Unavailable
from meshssh_common.kid_misses import KidMisses
from meshssh_common.kv import KvEntry, TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import JwksRefreshReply, JwksRefreshRequest, JwksSnapshot

__all__ = ["FetchLease", "JwksMirror", "MirrorTiming", "key_ids"]

_SNAPSHOT = subjects.JWKS_KEY
_LEASE = subjects.AUTHN_FETCH_LEASE_KEY
_POLL_CAP = 5.0  # re-read the shared lease at least this often


class FetchLease(msgspec.Struct, frozen=True, kw_only=True):
    """Shared fetch schedule of all replicas (authn-private KV)."""

    next_due: float = 0.0  # a scheduled fetch is due from then
    forced_at: float = 0.0  # the last forced fetch started then
    attempt_at: float = 0.0
    success_at: float = 0.0
    holder: str = ""  # instance that made the last attempt


@dataclass(frozen=True, slots=True)
class MirrorTiming:
    """How often to fetch."""

    default_interval: float  # when the provider sends no cache lifetime
    min_forced_interval: float  # at most one forced fetch per this many seconds
    retry_interval: float  # after a failed fetch
    min_interval: float = 30.0  # floor under the provider's cache lifetime (no-store...)
    max_interval: float = 86400.0
    kid_interval: float = 30.0  # a kid a forced fetch did not bring is refused this long
    max_forced_wait: float = 2.0  # a request waits this long at most for the next slot


_MAX_KIDS_REMEMBERED = 4096
_MAX_ANNOUNCED = 256  # the wire's limit per JwksMissed


@dataclass(frozen=True, slots=True)
class _Forced:
    """How one shared forced fetch ended."""

    outcome: Literal["fetched", "failed", "throttled", "published"]
    fetched: Fetched | None = None
    retry_after: float = 0.0


@dataclass
class _Pending:
    """The next forced fetch of this replica, not started yet: who waits and for which kids."""

    wanted: set[str] = field(default_factory=set)
    task: asyncio.Task[_Forced] | None = None


def key_ids(keys: tuple[dict[str, object], ...]) -> tuple[str, ...]:
    """The ``kid`` of each key that has one."""
    return tuple(str(k["kid"]) for k in keys if isinstance(k.get("kid"), str))


class JwksMirror:
    """Fetches from a :class:`KeySource` and publishes :class:`JwksSnapshot` to KV."""

    def __init__(
        self,
        source: KeySource,
        snapshots: TypedKV[JwksSnapshot],
        leases: TypedKV[FetchLease],
        timing: MirrorTiming,
        *,
        metrics: AuthnMetrics,
        log: BoundLogger,
        instance: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._snapshots = snapshots
        self._leases = leases
        self._timing = timing
        self._metrics = metrics
        self._log = log
        self._instance = instance
        self._clock = clock
        self._forced_lock = asyncio.Lock()
        self._rescheduled = asyncio.Event()
        self._misses = KidMisses(_MAX_KIDS_REMEMBERED)
        self._pending: _Pending | None = None
        self._forced_tasks: set[asyncio.Task[_Forced]] = set()
        self.on_missed: Callable[[tuple[str, ...], float], Awaitable[None]] | None = None
        """Tells the other replicas which kids a forced fetch here did not find."""

    async def startup(self) -> None:
        """Drop another issuer's snapshot, then fetch once (failure keeps what KV holds)."""
        entry = await self._snapshots.get(_SNAPSHOT)
        if entry is not None and not _same_issuer(entry.value.jwt.issuer, self._source.issuer):
            self._log.warning(
                "issuer changed: withdrawing the old provider's keys",
                extra={"expected": self._source.issuer, "found": entry.value.jwt.issuer},
            )
            await self._snapshots.delete(_SNAPSHOT)
        await self.fetch_and_publish("startup")

    async def run(self) -> None:
        """Scheduled fetches until cancelled, one replica per period (shared lease)."""
        try:
            await self._run_scheduled()
        finally:
            for task in list(self._forced_tasks):
                task.cancel()
            await asyncio.gather(*self._forced_tasks, return_exceptions=True)

    async def _run_scheduled(self) -> None:
        while True:
            try:
                wait = await self._scheduled_once()
            except Exception:  # NATS away, a bad KV value...: this loop must outlive it
                self._log.exception("scheduled JWKS refresh failed; retrying")
                wait = self._timing.retry_interval
            # Sleep until due, but look again early when a fetch here changed the schedule.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(wait, 0.1), _POLL_CAP)):
                    await self._rescheduled.wait()
            self._rescheduled.clear()

    async def _scheduled_once(self) -> float:
        """Fetch if due and this replica wins the lease; returns seconds until the next look."""
        entry = await self._leases.get(_LEASE)
        lease = entry.value if entry is not None else FetchLease()
        now = self._clock()
        if now >= lease.next_due:
            claim = msgspec.structs.replace(
                lease,
                next_due=now + self._timing.retry_interval,
                attempt_at=now,
                holder=self._instance,
            )
            if await self._write_lease(entry, claim):
                await self.fetch_and_publish("scheduled")
                return 0.0
        return lease.next_due - now

    async def keys_changed(self) -> None:
        """The embedded key ring changed: publish at once (idempotent across replicas)."""
        await self.fetch_and_publish("keys_changed")

    async def fetch_and_publish(self, trigger: str) -> Fetched | None:
        """Fetch now and publish what changed; None (and KV untouched) when the fetch failed."""
        try:
            fetched = await self._source.fetch()
        except Unavailable as e:
            kind = e.kind if isinstance(e, FetchError) else "unreachable"
            self._metrics.jwks_errors.labels(kind=kind).inc()
            self._metrics.jwks_refreshes.labels(trigger=trigger, outcome="error").inc()
            self._log.warning(
                "JWKS fetch failed; keeping the last good keys",
                extra={"trigger": trigger, "kind": kind, "error": str(e)},
            )
            retry_at = self._clock() + self._timing.retry_interval
            await self._update_lease(
                lambda lease: msgspec.structs.replace(lease, next_due=max(lease.next_due, retry_at))
            )
            return None
        changed = await self._publish(fetched)
        now = self._clock()
        lifetime = self._timing.default_interval if fetched.max_age is None else fetched.max_age
        lifetime = min(max(lifetime, self._timing.min_interval), self._timing.max_interval)
        await self._update_lease(lambda lease: _succeeded(lease, now, lifetime, self._instance))
        self._rescheduled.set()
        outcome = "updated" if changed else "unchanged"
        self._metrics.jwks_refreshes.labels(trigger=trigger, outcome=outcome).inc()
        self._metrics.jwks_keys.set(len(fetched.keys))
        self._metrics.jwks_last_success.set(now)
        if changed:
            self._log.info(
                "JWKS published",
                extra={
                    "trigger": trigger,
                    "kids": list(key_ids(fetched.keys)),
                    "source": fetched.source,
                },
            )
        return fetched

    async def refresh(self, req: JwksRefreshRequest) -> JwksRefreshReply:
        """Serve ``jwks-refresh``: fetch unless every asked ``kid`` is known or just missed.

        A request that needs a fetch waits for the next shared slot and joins the fetch the
        other waiting requests of this replica share; empty ``kid`` forces a fetch.

        Raises:
            Unavailable: the fetch was allowed but the provider could not be read (the last
                good keys stay published).
        """
        wanted = {k for k in (req.kid, *req.kids) if k}
        known = await self._published_kids()
        missing = wanted - set(known)
        if wanted and not missing:
            self._metrics.jwks_refreshes.labels(trigger="forced", outcome="known_kid").inc()
            return JwksRefreshReply(fetched=False, key_ids=known)
        waits = [self._misses.remaining(k) for k in missing]
        if missing and all(w > 0 for w in waits):
            self._metrics.jwks_refreshes.labels(trigger="forced", outcome="throttled_kid").inc()
            return JwksRefreshReply(fetched=False, key_ids=known, retry_after=min(waits))
        forced = await self._shared_forced(missing)
        if forced.outcome == "throttled":
            self._metrics.jwks_refreshes.labels(trigger="forced", outcome="throttled_global").inc()
            return JwksRefreshReply(
                fetched=False, key_ids=await self._published_kids(), retry_after=forced.retry_after
            )
        if forced.outcome == "failed":
            raise Unavailable("the identity provider could not be read; last good keys kept")
        if forced.fetched is None:  # published meanwhile by another replica's fetch
            return JwksRefreshReply(fetched=False, key_ids=await self._published_kids())
        got = key_ids(forced.fetched.keys)
        self._log.info(
            "forced JWKS refresh",
            extra={
                "kids": sorted(missing)[:8],
                "found": sorted(missing & set(got))[:8],
                "requester": req.requester[:64],
            },
        )
        return JwksRefreshReply(fetched=True, key_ids=got)

    async def _shared_forced(self, wanted: set[str]) -> _Forced:
        """Join this replica's next forced fetch (starting one if none is waiting)."""
        pending = self._pending
        if pending is None:
            pending = self._pending = _Pending()
            pending.task = asyncio.create_task(self._forced(pending))
            self._forced_tasks.add(pending.task)
            pending.task.add_done_callback(self._forced_tasks.discard)
        pending.wanted |= wanted
        assert pending.task is not None
        return await asyncio.shield(pending.task)

    async def _forced(self, pending: _Pending) -> _Forced:
        try:
            async with self._forced_lock:  # this replica's forced fetches run one at a time
                wait = await self._claim_forced(pending.wanted)
                if self._pending is pending:
                    self._pending = None  # requests from now on need a fetch after this one
                if wait is None:
                    return _Forced("published")
                if wait > 0:
                    return _Forced("throttled", retry_after=wait)
                fetched = await self.fetch_and_publish("forced")
                if fetched is None:
                    return _Forced("failed")
                await self._note_fetched(pending.wanted, set(key_ids(fetched.keys)))
                return _Forced("fetched", fetched)
        finally:
            if self._pending is pending:
                self._pending = None

    async def _note_fetched(self, wanted: set[str], got: set[str]) -> None:
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
            except Exception as e:  # the others then fetch once more for it: no harm
                self._log.warning("could not tell the other replicas", extra={"error": str(e)})

    def note_missed(self, kids: Sequence[str], ttl: float) -> None:
        """Refuse these kids without fetching for ``ttl`` seconds (a fetch did not bring them)."""
        for kid in kids:
            self._misses.record(kid, min(ttl, self._timing.kid_interval))

    async def _claim_forced(self, wanted: set[str]) -> float | None:
        """Take the forced-fetch slot, waiting up to ``max_forced_wait`` for it.

        Returns 0 when taken, None when every ``wanted`` kid got published while waiting
        (another replica fetched), else the seconds to wait still.
        """
        deadline = time.monotonic() + self._timing.max_forced_wait
        interval = self._timing.min_forced_interval
        for _ in range(20):
            entry = await self._leases.get(_LEASE)
            lease = entry.value if entry is not None else FetchLease()
            now = self._clock()
            # A lease from a replica whose clock runs ahead holds up one interval at most.
            wait = min(lease.forced_at + interval - now, interval)
            if wait > 0:
                if time.monotonic() + wait > deadline:
                    return wait
                await asyncio.sleep(wait)
                if wanted and wanted <= set(await self._published_kids()):
                    return None
                continue
            claim = msgspec.structs.replace(
                lease, forced_at=now, attempt_at=now, holder=self._instance
            )
            if await self._write_lease(entry, claim):
                return 0.0
        return max(interval, 0.1)  # lost every race: others keep fetching

    async def _published_kids(self) -> tuple[str, ...]:
        entry = await self._snapshots.get(_SNAPSHOT)
        return key_ids(entry.value.keys) if entry is not None else ()

    async def _write_lease(self, entry: KvEntry[FetchLease] | None, lease: FetchLease) -> bool:
        try:
            if entry is None:
                await self._leases.create(_LEASE, lease)
            else:
                await self._leases.update(_LEASE, lease, last=entry.revision)
        except Conflict:
            return False
        return True

    async def _update_lease(self, change: Callable[[FetchLease], FetchLease]) -> None:
        for _ in range(5):
            entry = await self._leases.get(_LEASE)
            if await self._write_lease(entry, change(entry.value if entry else FetchLease())):
                return

    async def _publish(self, fetched: Fetched) -> bool:
        for _ in range(5):
            entry = await self._snapshots.get(_SNAPSHOT)
            prev = entry.value if entry is not None else None
            client = fetched.client
            if client is None and prev is not None and prev.client is not None:
                # Discovery failed but the keys came through: keep the known client config.
                client = prev.client if _same_issuer(prev.jwt.issuer, fetched.jwt.issuer) else None
            snap = JwksSnapshot(
                jwt=fetched.jwt,
                keys=fetched.keys,
                fetched_at=self._clock(),
                source=fetched.source,
                client=client,
            )
            if prev is not None and _same_content(prev, snap):
                return False
            try:
                if entry is None:
                    await self._snapshots.create(_SNAPSHOT, snap)
                else:
                    await self._snapshots.update(_SNAPSHOT, snap, last=entry.revision)
            except Conflict:
                continue
            return True
        return False


def _succeeded(lease: FetchLease, now: float, lifetime: float, holder: str) -> FetchLease:
    # Fresh keys come with a fresh cache lifetime: it replaces any earlier schedule.
    return msgspec.structs.replace(lease, success_at=now, next_due=now + lifetime, holder=holder)


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _same_content(a: JwksSnapshot, b: JwksSnapshot) -> bool:
    return (a.jwt, a.keys, a.source, a.client) == (b.jwt, b.keys, b.source, b.client)
