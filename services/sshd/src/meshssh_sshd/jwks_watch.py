"""The signing keys authn mirrors into KV ``meshssh-jwks``, followed live (SPEC §5, §6).

The map says how to validate (issuer, audiences, max age: ``netmap.peer.jwt``); this watcher
holds the keys. :meth:`JwksWatch.validator_for` builds a :class:`JwtValidator` for a config
and caches it until the keys or the config change. On an unknown ``kid`` the caller asks
:meth:`JwksWatch.refresh`: one request on ``AUTHN_JWKS_REFRESH`` (concurrent callers share
it, and at most one is sent per ``min_interval``), then a bounded wait for the new snapshot.

Example::

    keys = JwksWatch(ctx.nc, ctx.js, metrics, log)
    validator = keys.validator_for(netmap.peer.jwt)   # None until keys arrive
    if await keys.refresh("kid-2"):
        validator = keys.validator_for(netmap.peer.jwt)
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshssh_common import subjects
from meshssh_common.errors import MeshError, WireError
from meshssh_common.jwt_validation import JwtValidator
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.rpc import request
from meshssh_common.wire import JwksRefreshReply, JwksRefreshRequest, JwksSnapshot, JwtConfig
from meshssh_sshd.cancellation import raise_if_cancelling
from meshssh_sshd.metrics import SshdMetrics

__all__ = ["JwksWatch"]

_RETRY = 1.0


class JwksWatch:
    """Holds the current JWKS snapshot and builds validators from it."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        base: ServiceMetrics,
        metrics: SshdMetrics,
        log: BoundLogger,
        *,
        requester: str = "",
        min_interval: float = 10.0,
        wait: float = 3.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self._base = base
        self._metrics = metrics
        self._log = log
        self._requester = requester
        self._min_interval = min_interval
        self._wait = wait
        self._changed = asyncio.Condition()
        self._initial = asyncio.Event()
        self._revision = 0
        self._cache: tuple[int, JwtConfig, JwtValidator] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_refresh = -float("inf")
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
        validator = JwtValidator(config, self.snapshot.keys)
        self._cache = (self._revision, config, validator)
        return validator

    async def refresh(self, kid: str) -> bool:
        """Ask authn to refetch the keys because ``kid`` is unknown; True if ``kid`` arrived.

        Concurrent callers share one request; a request is sent at most once per
        ``min_interval`` seconds (authn rate-limits too). Never raises.
        """
        if self._inflight is None or self._inflight.done():
            if time.monotonic() - self._last_refresh < self._min_interval:
                self._metrics.jwks_refreshes.labels(result="throttled").inc()
                return self._has_kid(kid)
            self._last_refresh = time.monotonic()
            self._inflight = asyncio.create_task(self._refresh(kid))
        return await asyncio.shield(self._inflight)

    def _has_kid(self, kid: str) -> bool:
        snap = self.snapshot
        return snap is not None and any(str(k.get("kid", "")) == kid for k in snap.keys)

    async def _refresh(self, kid: str) -> bool:
        before = self._revision
        try:
            reply = await request(
                self._nc,
                subjects.AUTHN_JWKS_REFRESH,
                JwksRefreshRequest(kid=kid[:256], requester=self._requester),
                JwksRefreshReply,
                timeout=self._wait,
            )
        except MeshError as e:
            self._metrics.jwks_refreshes.labels(result="error").inc()
            self._log.warning("JWKS refresh request failed", extra={"kid": kid, "error": str(e)})
            return False
        self._metrics.jwks_refreshes.labels(
            result="fetched" if reply.fetched else "not_fetched"
        ).inc()
        if kid not in reply.key_ids:
            self._log.info(
                "JWKS refresh did not bring the key", extra={"kid": kid, "keys": reply.key_ids}
            )
            return self._has_kid(kid)
        # authn stored the new snapshot before replying; wait until our watch has it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._wait), self._changed:
                await self._changed.wait_for(
                    lambda: self._revision != before and self._has_kid(kid)
                )
        return self._has_kid(kid)

    def _bad_value(self, key: str, error: WireError) -> None:
        self._base.bad_messages.labels(endpoint="jwks", reason="invalid").inc()
        self._log.warning("ignored invalid JWKS snapshot", extra={"key": key, "error": str(error)})

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
            if self._inflight is not None:
                self._inflight.cancel()
                await asyncio.gather(self._inflight, return_exceptions=True)

    async def _watch(self) -> None:
        kv = await open_bucket(self._js, subjects.BUCKET_JWKS)
        typed = TypedKV(kv, JwksSnapshot, on_bad_value=self._bad_value)
        async for event in typed.watch(subjects.JWKS_KEY):
            if event.initial_done:
                self._initial.set()
                continue
            async with self._changed:
                self.snapshot = event.value
                self._revision = event.revision
                self._changed.notify_all()
            self._initial.set()
            if event.value is None:
                self._log.warning("JWKS snapshot deleted: JWT logins will fail")
            else:
                self._log.info(
                    "JWKS snapshot applied",
                    extra={"keys": len(event.value.keys), "source": event.value.source},
                )
