"""The signing keys authn mirrors into KV ``meshssh-jwks``, followed live (SPEC §5, §6).

The map says how to validate (issuer, audiences, max age: ``netmap.peer.jwt``); this watcher
holds the keys. :meth:`JwksWatch.validator_for` builds a :class:`JwtValidator` for a config
from the IdP's keys (never an exchange key, even one listed among them), and
:meth:`JwksWatch.peer_validator_for` a :class:`PeerTokenValidator` from authn's exchange keys
(SPEC §6, per-peer tokens); each is cached until the keys or the config change.

On an unknown ``kid`` the caller asks :meth:`JwksWatch.refresh`, throttled per ``kid`` and
globally, so that one made-up ``kid`` never holds up another one's refresh:

- a ``kid`` that a fresh fetch did not bring is refused at once, with no request, for
  ``kid_interval`` (the memory of such ids is bounded: :class:`KidMisses`);
- at most one request to authn (``AUTHN_JWKS_REFRESH``) is in flight, at most one per
  ``min_interval``; the ids met meanwhile wait for the next request and share it. The
  request names them (up to the wire's 65) so authn can answer from what it knows; a bigger
  batch (a flood of made-up ids) asks for a plain refetch instead, which authn paces just
  the same, and every id in the batch is settled from the key ids it brings. Past
  ``_MAX_WAITING`` ids one batch refuses more as ``throttled_global``;
- authn paces the provider in turn (one fetch a second across its replicas) and answers once
  the fetch is done; the caller then waits (bounded) for the new snapshot to arrive here.

Metric ``jwks_refreshes_total{result}`` per call: ``fetched`` (the kid arrived), ``missed``
(a fresh fetch did not have it), ``throttled_kid``, ``throttled_global``, ``throttled_authn``
(authn paced it) or ``error``.

The KV value is a signed document (kind ``jwks``, :mod:`meshssh_common.signed_doc`) opened
with the keys pinned in ``pins`` (``--pins``, re-read when it changes); a refused one is
counted in ``signed_doc_refused{kind="jwks"}`` and logged, and the old snapshot stays. Without
pins nothing applies (fail closed: JWT logins fail), said once at start.

Example::

    keys = JwksWatch(ctx.nc, ctx.metrics, metrics, log, pins=settings.pins)
    validator = keys.validator_for(netmap.peer.jwt)   # None until keys arrive
    if await keys.refresh("kid-2"):
        validator = keys.validator_for(netmap.peer.jwt)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.cancellation import raise_if_cancelling
from meshssh_common.errors import BadReason, MeshError, WireError
from meshssh_common.jwt_validation import JwtValidator
from meshssh_common.key_watch import KeyWatch
from meshssh_common.kid_misses import KidMisses
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_tokens import PeerTokenValidator, exchange_kids
from meshssh_common.rpc import request
from meshssh_common.signed_doc import PinnedVerifier, Refused
from meshssh_common.tasks import TaskSet
from meshssh_common.wire import JwksRefreshReply, JwksRefreshRequest, JwksSnapshot, JwtConfig
from meshssh_sshd.metrics import SshdMetrics

__all__ = ["JwksWatch", "Refresh"]

_RETRY = 1.0
_MAX_KID = 256  # the wire's limit
_MAX_NAMED = 65  # kid + 64 kids: the wire's limit
_MAX_WAITING = 4096  # ids waiting for one request (bounded anyway by the open connections)
_ERROR_BACKOFF = 1.0  # authn did not answer: the kids of that request wait this long
_MAX_KIDS_REMEMBERED = 4096


class Refresh(enum.StrEnum):
    """What became of one kid's refresh (the ``result`` label of ``jwks_refreshes``)."""

    FETCHED = "fetched"
    MISSED = "missed"
    THROTTLED_KID = "throttled_kid"
    THROTTLED_GLOBAL = "throttled_global"
    THROTTLED_AUTHN = "throttled_authn"
    ERROR = "error"


@dataclass(eq=False)
class _Batch:
    """Kids waiting for the next request, and what became of each."""

    kids: set[str] = field(default_factory=set)
    results: dict[str, Refresh] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class JwksWatch:
    """Holds the current JWKS snapshot and builds validators from it."""

    def __init__(
        self,
        nc: NATS,
        base: ServiceMetrics,
        metrics: SshdMetrics,
        log: BoundLogger,
        *,
        requester: str = "",
        min_interval: float = 0.5,
        kid_interval: float = 30.0,
        wait: float = 5.0,
        pins: Path | None = None,
    ) -> None:
        self._nc = nc
        self._pins = pins
        self._base = base
        self._metrics = metrics
        self._log = log
        self._requester = requester
        self._min_interval = min_interval
        self._kid_interval = kid_interval
        self._wait = wait
        self._changed = asyncio.Condition()
        self._initial = asyncio.Event()
        self._revision = 0  # counts applied snapshots: the validator cache's key
        self._cache: tuple[int, JwtConfig, JwtValidator] | None = None
        self._peer_cache: tuple[int, JwtConfig, str, PeerTokenValidator] | None = None
        self._exchange_kids: tuple[int, frozenset[str]] = (-1, frozenset())
        self._misses = KidMisses(_MAX_KIDS_REMEMBERED)
        self._next: _Batch | None = None  # collecting kids, not sent yet
        self._send_lock = asyncio.Lock()
        self._last_sent = -float("inf")
        self._tasks = TaskSet(log)
        self.snapshot: JwksSnapshot | None = None

    async def wait_initial(self, timeout: float) -> bool:
        """Wait until the stored snapshot (or its absence) is known; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._initial.wait()
                return True
        return False

    def validator_for(self, config: JwtConfig) -> JwtValidator | None:
        """A validator for ``config`` with the current keys; None when no keys are known."""
        if self.snapshot is None:
            return None
        cached = self._cache
        if cached is not None and cached[0] == self._revision and cached[1] == config:
            return cached[2]
        exchange = self.exchange_kids
        idp_keys = [k for k in self.snapshot.keys if str(k.get("kid", "")) not in exchange]
        validator = JwtValidator(config, idp_keys)
        self._cache = (self._revision, config, validator)
        return validator

    def peer_validator_for(self, config: JwtConfig, peer_id: str) -> PeerTokenValidator | None:
        """A per-peer token validator for ``config`` and ``peer_id``; None without a snapshot."""
        if self.snapshot is None:
            return None
        cached = self._peer_cache
        if (
            cached is not None
            and cached[0] == self._revision
            and cached[1] == config
            and cached[2] == peer_id
        ):
            return cached[3]
        validator = PeerTokenValidator(config, self.snapshot, peer_id=peer_id)
        self._peer_cache = (self._revision, config, peer_id, validator)
        return validator

    @property
    def exchange_kids(self) -> frozenset[str]:
        """The ``kid`` of authn's exchange keys in the current snapshot."""
        revision, kids = self._exchange_kids
        if revision != self._revision:
            kids = exchange_kids(self.snapshot)
            self._exchange_kids = (self._revision, kids)
        return kids

    async def refresh(self, kid: str) -> bool:
        """Ask authn to refetch the keys because ``kid`` is unknown; True if ``kid`` arrived.

        Refused at once (False, no request) when ``kid`` missed within ``kid_interval`` or
        the next batch is full; otherwise joins the next request. Never raises.
        """
        kid = kid[:_MAX_KID]
        if self._has_kid(kid):
            return True
        if self._misses.remaining(kid) > 0:
            self._metrics.jwks_refreshes.labels(result=Refresh.THROTTLED_KID).inc()
            return False
        batch = self._next
        if batch is None:
            batch = self._next = _Batch()
            batch.task = self._tasks.spawn(self._send(batch), "jwks-refresh")
        elif kid not in batch.kids and len(batch.kids) >= _MAX_WAITING:
            self._metrics.jwks_refreshes.labels(result=Refresh.THROTTLED_GLOBAL).inc()
            return False
        batch.kids.add(kid)
        assert batch.task is not None
        await asyncio.shield(batch.task)
        result = batch.results.get(kid, Refresh.ERROR)
        self._metrics.jwks_refreshes.labels(result=result).inc()
        return result == Refresh.FETCHED

    def _has_kid(self, kid: str) -> bool:
        snap = self.snapshot
        return snap is not None and any(str(k.get("kid", "")) == kid for k in snap.keys)

    async def _send(self, batch: _Batch) -> None:
        """Send ``batch`` as one request once the global pace allows; fill in its results."""
        async with self._send_lock:  # one request in flight
            delay = self._last_sent + self._min_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._next is batch:
                self._next = None  # kids met from now on go into the next request
            self._last_sent = time.monotonic()
            ask = sorted(k for k in batch.kids if not self._has_kid(k))
            batch.results.update(dict.fromkeys(batch.kids - set(ask), Refresh.FETCHED))
            if not ask:
                return
            try:
                await self._ask(ask, batch.results)
            except Exception:  # never let a refresh crash a login: those kids count as errors
                self._log.exception("JWKS refresh failed", extra={"kids": ask[:8]})

    async def _ask(self, kids: list[str], results: dict[str, Refresh]) -> None:
        if len(kids) <= _MAX_NAMED:
            req = JwksRefreshRequest(kid=kids[0], kids=tuple(kids[1:]), requester=self._requester)
        else:
            req = JwksRefreshRequest(requester=self._requester)  # a plain (paced) refetch
        try:
            reply = await request(
                self._nc, subjects.AUTHN_JWKS_REFRESH, req, JwksRefreshReply, timeout=self._wait
            )
        except MeshError as e:
            for kid in kids:
                results[kid] = Refresh.ERROR
                self._misses.record(kid, _ERROR_BACKOFF)
            self._log.warning(
                "JWKS refresh request failed", extra={"kids": kids[:8], "error": str(e)}
            )
            return
        arrived = [k for k in kids if k in reply.key_ids]
        for kid in kids:
            if kid in reply.key_ids:
                continue
            if reply.fetched:
                results[kid] = Refresh.MISSED
                self._misses.record(kid, self._kid_interval)
            else:
                results[kid] = Refresh.THROTTLED_AUTHN
                self._misses.record(kid, min(max(reply.retry_after, 0.5), self._kid_interval))
        if len(arrived) < len(kids):
            self._log.info(
                "JWKS refresh did not bring every key",
                extra={"kids": kids[:8], "fetched": reply.fetched, "keys": reply.key_ids[:16]},
            )
        if arrived:
            # authn stored the new snapshot before replying; wait until our watch has it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait), self._changed:
                    await self._changed.wait_for(lambda: all(map(self._has_kid, arrived)))
            for kid in arrived:
                results[kid] = Refresh.FETCHED if self._has_kid(kid) else Refresh.ERROR

    def _bad_value(self, key: str, error: WireError) -> None:
        if isinstance(error, Refused):
            self._base.signed_doc_refused.labels(kind="jwks", reason=error.why).inc()
            self._log.warning(
                "refused a JWKS snapshot: its signature does not verify with the pinned keys; "
                "the old one stays in force",
                extra={"key": key, "reason": error.why, "error": str(error)},
            )
            return
        self._base.bad_messages.labels(endpoint="jwks", reason=BadReason.INVALID).inc()
        self._log.warning("ignored invalid JWKS snapshot", extra={"key": key, "error": str(error)})

    def _broke(self, error: Exception) -> None:
        self._log.warning("JWKS watch broke; retrying", extra={"error": repr(error)})

    async def run(self) -> None:
        """Follow the snapshot until cancelled, re-opening the watch when it breaks."""
        try:
            while True:
                try:
                    await self._watch()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # any broken watch is re-opened
                    self._log.warning("JWKS watch broke; retrying", extra={"error": repr(e)})
                raise_if_cancelling()
                await asyncio.sleep(_RETRY)
        finally:
            await self._tasks.close()

    async def _watch(self) -> None:
        # A direct get plus a plain subscription (no consumer, nothing beyond a peer's
        # permissions); read again after every reconnect, so rotated keys are not held up.
        # Never creates the bucket: authn owns it. No version: the latest stored snapshot
        # wins (fetched_at is a wall clock of whichever authn replica fetched).
        verifier = PinnedVerifier("jwks", self._pins or Path("/nonexistent/pins.json"))
        if not verifier.pinned:
            self._log.error(
                "no JWKS signing key pinned (--pins unset or its file missing): no JWKS "
                "snapshot will be applied, JWT logins fail until the pins file holds one",
                extra={"pins": str(self._pins) if self._pins else ""},
            )
        watch = KeyWatch(
            self._nc,
            subjects.BUCKET_JWKS,
            subjects.JWKS_KEY,
            JwksSnapshot,
            version=None,
            on_bad_value=self._bad_value,
            verifier=verifier,
        )
        async for event in watch.follow(on_retry=self._broke):
            if event.synced:
                self._initial.set()
                continue
            async with self._changed:
                self.snapshot = event.value
                self._revision += 1
                self._changed.notify_all()
            if event.value is None:
                self._log.warning("JWKS snapshot deleted: JWT logins will fail")
            else:
                self._log.info(
                    "JWKS snapshot applied",
                    extra={"keys": len(event.value.keys), "source": event.value.source},
                )
