"""The JWKS mirror: copies the provider's keys and the validation config into ``meshssh-jwks``.

SSH servers validate tokens only with what this writes, so it must never make things worse:

- a failed fetch changes nothing in KV (the last good keys stay published);
- the snapshot is rewritten only when its content changes (no churn for watchers);
- scheduled fetches follow the provider's ``Cache-Control`` (clamped), and a shared lease in
  KV (``meshssh-authn`` / ``jwks-fetch``) makes one replica fetch per period, not all;
- forced fetches (a server met an unknown ``kid``) go through :mod:`jwks_refresh`, which
  paces them on the same lease (``forced_at`` when one starts, ``forced_done`` when it has
  published).

Every snapshot also carries authn's exchange keys (public JWKs) and the exchange issuer, so
servers can validate per-peer tokens; a change of the exchange keys republishes it.

When the configured issuer differs from the one in KV (the operator switched providers), the
old snapshot is deleted at startup: servers fail closed until the new provider answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import nats.js.errors

from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.exchange_keys import ExchangeKeys
from meshssh_authn.key_sources import Fetched, KeySource
from meshssh_authn.provider_http import FetchError
from meshssh_common import subjects
from meshssh_common.errors import Conflict, Unavailable, WireError
from meshssh_common.kv import KvEntry, TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import JwksSnapshot

__all__ = ["FetchLease", "JwksMirror", "MirrorTiming", "key_ids"]

_SNAPSHOT = subjects.JWKS_KEY
_LEASE = subjects.AUTHN_FETCH_LEASE_KEY
_POLL_CAP = 5.0  # re-read the shared lease at least this often


class FetchLease(msgspec.Struct, frozen=True, kw_only=True):
    """Shared fetch schedule of all replicas (authn-private KV)."""

    next_due: float = 0.0  # a scheduled fetch is due from then
    forced_at: float = 0.0  # the last forced fetch started then
    forced_done: float = 0.0  # the forced fetch that started then has published its keys
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
        exchange: ExchangeKeys,
        exchange_issuer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._exchange = exchange
        self._exchange_issuer = exchange_issuer
        self._snapshots = snapshots
        self._leases = leases
        self._timing = timing
        self._metrics = metrics
        self._log = log
        self._instance = instance
        self._clock = clock
        self._rescheduled = asyncio.Event()

    async def startup(self) -> None:
        """Drop another issuer's snapshot, then fetch once (failure keeps what KV holds)."""
        _, entry = await self._current()
        if entry is not None and not _same_issuer(entry.value.jwt.issuer, self._source.issuer):
            self._log.warning(
                "issuer changed: withdrawing the old provider's keys",
                extra={"expected": self._source.issuer, "found": entry.value.jwt.issuer},
            )
            await self._snapshots.delete(_SNAPSHOT)
        await self.fetch_and_publish("startup")

    async def run(self) -> None:
        """Scheduled fetches until cancelled, one replica per period (shared lease)."""
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
        """The embedded key ring or the exchange keys changed: publish at once (idempotent)."""
        await self.fetch_and_publish("keys_changed")

    async def fetch_and_publish(
        self, trigger: str, *, forced_at: float | None = None
    ) -> Fetched | None:
        """Fetch now and publish what changed; None (and KV untouched) when the fetch failed.

        ``forced_at``: the forced fetch slot this fetch took; on success the lease says it is
        done (``forced_done``), so every replica's waiting requests know it covered them.
        """
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
        await self._update_lease(
            lambda lease: _succeeded(lease, now, lifetime, self._instance, forced_at)
        )
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

    async def read_lease(self) -> tuple[KvEntry[FetchLease] | None, FetchLease]:
        """The shared lease as stored (entry for compare-and-set) and its value."""
        entry = await self._leases.get(_LEASE)
        return entry, entry.value if entry is not None else FetchLease()

    async def claim_forced(self, entry: KvEntry[FetchLease] | None, lease: FetchLease) -> float:
        """Take the forced-fetch slot by compare-and-set; its time, or 0.0 if another won."""
        now = self._clock()
        claim = msgspec.structs.replace(lease, forced_at=now, attempt_at=now, holder=self._instance)
        return now if await self._write_lease(entry, claim) else 0.0

    async def published_kids(self) -> tuple[str, ...]:
        """The ``kid`` of every key in the published snapshot."""
        _, entry = await self._current()
        return key_ids(entry.value.keys) if entry is not None else ()

    async def _current(self) -> tuple[int | None, KvEntry[JwksSnapshot] | None]:
        """The stored snapshot's revision and entry.

        A value that does not open (unsigned, or signed by a key this replica does not trust)
        has a revision but no entry, so the next publish replaces it.
        """
        try:
            entry = await self._snapshots.get(_SNAPSHOT)
        except WireError as e:
            self._log.warning("stored JWKS document refused; replacing it", extra={"error": str(e)})
            try:
                raw = await self._snapshots.kv.get(_SNAPSHOT)
            except nats.js.errors.KeyNotFoundError:
                return None, None
            return int(raw.revision or 0), None
        return (entry.revision if entry is not None else None), entry

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
            revision, entry = await self._current()
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
                exchange_issuer=self._exchange_issuer,
                exchange_keys=self._exchange.public_jwks(),
            )
            if prev is not None and _same_content(prev, snap):
                return False
            try:
                if revision is None:
                    await self._snapshots.create(_SNAPSHOT, snap)
                else:
                    await self._snapshots.update(_SNAPSHOT, snap, last=revision)
            except Conflict:
                continue
            return True
        return False


def _succeeded(
    lease: FetchLease, now: float, lifetime: float, holder: str, forced_at: float | None
) -> FetchLease:
    # Fresh keys come with a fresh cache lifetime: it replaces any earlier schedule.
    done = lease.forced_done if forced_at is None else max(lease.forced_done, forced_at)
    return msgspec.structs.replace(
        lease, success_at=now, next_due=now + lifetime, holder=holder, forced_done=done
    )


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _same_content(a: JwksSnapshot, b: JwksSnapshot) -> bool:
    return (a.jwt, a.keys, a.source, a.client, a.exchange_issuer, a.exchange_keys) == (
        b.jwt,
        b.keys,
        b.source,
        b.client,
        b.exchange_issuer,
        b.exchange_keys,
    )
