"""Revoking bus identities: removed peers' keys, replaced peer keys, rotated service creds.

The revocations live in KV bucket ``meshssh-bus``, key ``revocations``: a map of user public
key → :class:`Revocation` (``at``: JWTs issued at or before it are refused; ``until``: after it
no JWT of that key can still be valid, so the entry may go; 0: never, for service keys whose
JWTs do not expire). Every change is a compare-and-set, so several replicas never lose one.

Pushing makes nats-server apply them: the MESHSSH account JWT is re-signed with the
revocations (``operator-signing.nk``) and sent as a request on
``$SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE`` over a connection of its own (``system.creds``);
the server closes the revoked users' live connections at once. A replayed older account JWT
would undo newer revocations, so every push sends the newest stored value (read under one
lock), and every replica pushes again whenever the key changes (another replica wrote it),
after its system connection reconnects, and every :data:`REPUSH_EVERY` seconds.

Example::

    revocations = await BusRevocations.open(
        js, nc, keys, nats_url=url, ca=None, timeout=2.0, metrics=metrics, log=log
    )
    tg.create_task(revocations.run())      # pushes on start, on change, periodically
    await revocations.revoke(old_key, until=time.time() + MAX_PEER_CREDS_TTL)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshssh_common.bus_keys import BusKeys, claims_update_subject
from meshssh_common.bus_permissions import BUCKET_BUS
from meshssh_common.connection import connect_nats
from meshssh_common.errors import BadRequest, Conflict, Unavailable
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import BoundLogger
from meshssh_common.nats_jwt import Prefix, check_public_key
from meshssh_policy.metrics import PolicyMetrics

__all__ = ["KEY", "REPUSH_EVERY", "BusRevocations", "Revocation", "check_user_key"]

KEY = "revocations"
REPUSH_EVERY = 60.0
_ATTEMPTS = 50
_JITTER = 0.02  # seconds, at most, before another compare-and-set after losing one
_RETRY_FIRST, _RETRY_MAX = 0.2, 5.0
_TICK = 1.0  # how often the pusher looks at the system connection's reconnect count


class Revocation(msgspec.Struct, frozen=True, kw_only=True):
    """One revoked user key: refused for JWTs issued at or before ``at`` (unix seconds)."""

    at: int
    until: int = 0  # after this no JWT of the key can be valid (0: never prune)


Revocations = dict[str, Revocation]


def check_user_key(text: str) -> str:
    """``text`` if it is an nkey user public key ("U…", 56 characters, good checksum).

    Raises:
        BadRequest: anything else.
    """
    try:
        return check_public_key(text, Prefix.USER)
    except ValueError as e:
        raise BadRequest(
            f"{text[:64]!r} is not a NATS user public key (U..., 56 characters)"
        ) from e


def _prune(revocations: Mapping[str, Revocation], now: float) -> Revocations:
    return {k: v for k, v in revocations.items() if not v.until or v.until > now}


class BusRevocations:
    """The stored revocations of one replica, and their push to nats-server."""

    def __init__(
        self,
        keys: BusKeys,
        kv: TypedKV[Revocations],
        nc: NATS,
        system: NATS,
        *,
        timeout: float,
        metrics: PolicyMetrics,
        log: BoundLogger,
    ) -> None:
        self.keys = keys
        self.kv = kv
        self.nc = nc
        self.system = system
        self.timeout = timeout
        self.metrics = metrics
        self.log = log
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._pending: dict[str, tuple[int, int]] = {}  # key -> (at, until), for run()

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        nc: NATS,
        keys: BusKeys,
        *,
        nats_url: str,
        ca: Path | None,
        timeout: float,
        metrics: PolicyMetrics,
        log: BoundLogger,
    ) -> BusRevocations:
        """Open ``meshssh-bus`` and the system connection (``system.creds`` of ``keys``).

        Raises:
            ConfigError: the server refuses ``system.creds``.
        """
        kv = TypedKV(await open_bucket(js, BUCKET_BUS), Revocations)
        system = await connect_nats(
            nats_url, name="policy-system", log=log, creds=keys.creds("system"), ca=ca
        )
        return cls(keys, kv, nc, system, timeout=timeout, metrics=metrics, log=log)

    async def close(self) -> None:
        """Close the system connection."""
        with contextlib.suppress(Exception):
            await self.system.close()

    async def current(self) -> Revocations:
        """The stored revocations (empty when none were ever written)."""
        entry = await self.kv.get(KEY)
        return dict(entry.value) if entry is not None else {}

    async def revoke(self, public_key: str, *, until: float = 0.0) -> bool:
        """Revoke every JWT of ``public_key`` issued until now, and push the change.

        A failed push is logged and counted, and retried by :meth:`run` (the entry is stored).

        Args:
            public_key: the user key.
            until: when its last JWT expires at the latest (0: never prune the entry).

        Returns:
            False when an entry at least as recent was there already.

        Raises:
            BadRequest: not a user key. Unavailable: KV did not answer.
        """
        check_user_key(public_key)
        stored = await self._store(public_key, int(time.time()), int(until))
        try:
            await self.push()  # also when another path stored it first: it may not have pushed
        except Unavailable as e:
            self._dirty.set()
            self.log.warning("bus revocation not pushed yet", extra={"error": str(e)})
        return stored

    async def revoke_removed(self, public_key: str, *, until: float) -> None:
        """Revoke a removed peer's key now, or, should KV not answer, in the background.

        The peer is gone already, so its removal must not fail for this: :meth:`run` keeps
        trying (and every replica's engine queues the same revocation when it sees the removal).
        """
        try:
            await self.revoke(public_key, until=until)
        except Unavailable as e:
            self.log.warning(
                "bus revocation not stored yet; retrying in the background",
                extra={"public_key": public_key, "error": str(e)},
            )
            self.revoke_soon(public_key, until=until)

    def revoke_soon(self, public_key: str, *, until: float) -> None:
        """Queue a revocation for :meth:`run` (stored and pushed in the background, retried)."""
        at = int(time.time())
        old = self._pending.get(public_key)
        self._pending[public_key] = (max(at, old[0]) if old else at, int(until))
        self._dirty.set()

    async def _store(self, public_key: str, at: int, until: int) -> bool:
        """Write the entry by compare-and-set; False when one at least as recent is there."""
        for _ in range(_ATTEMPTS):
            entry = await self.kv.get(KEY)
            current = dict(entry.value) if entry is not None else {}
            old = current.get(public_key)
            if old is not None and old.at >= at and (not old.until or old.until >= until):
                return False
            current = _prune(current, time.time())
            current[public_key] = Revocation(at=at, until=until)
            try:
                if entry is None:
                    await self.kv.create(KEY, current)
                else:
                    await self.kv.update(KEY, current, last=entry.revision)
            except Conflict:
                await asyncio.sleep(random.uniform(0, _JITTER))
                continue
            self.metrics.bus_revocations.inc()
            self.log.info("bus key revoked", extra={"public_key": public_key, "at": at})
            return True
        raise Unavailable("too many concurrent writers of the bus revocations; try again")

    async def _store_pending(self) -> None:
        for key, (at, until) in list(self._pending.items()):
            await self._store(key, at, until)
            if self._pending.get(key) == (at, until):
                del self._pending[key]

    async def push(self) -> None:
        """Send the newest stored revocations to nats-server in a fresh account JWT.

        Raises:
            Unavailable: KV, the system connection or the server refused or did not answer.
        """
        async with self._lock:
            revocations = await self.current()
            jwt = self.keys.account_jwt({k: v.at for k, v in revocations.items()})
            subject = claims_update_subject(self.keys.account)
            try:
                reply = await self.system.request(subject, jwt.encode(), timeout=self.timeout)
                answer = json.loads(reply.data)
            except Exception as e:
                self.metrics.bus_push_failures.inc()
                raise Unavailable(f"the account update was not answered: {e!r}") from e
            error = answer.get("error") if isinstance(answer, dict) else "not a JSON object"
            if error:
                self.metrics.bus_push_failures.inc()
                raise Unavailable(f"nats-server refused the account update: {error}")

    async def run(self) -> None:
        """Push now, whenever the stored key changes, after reconnects and periodically."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow())
            tg.create_task(self._pusher())

    async def _follow(self) -> None:
        async for _ in self.kv.follow(KEY, self.nc, on_retry=self._watch_failed):
            self._dirty.set()  # a write (ours or another replica's), or a restarted watch

    def _watch_failed(self, error: Exception) -> None:
        self.log.warning("revocations watch failed; retrying", extra={"error": repr(error)})

    async def _pusher(self) -> None:
        delay = _RETRY_FIRST
        reconnects = int(self.system.stats["reconnects"])
        last = -REPUSH_EVERY
        self._dirty.set()  # push on start
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK):
                    await self._dirty.wait()
            now = int(self.system.stats["reconnects"])
            if now != reconnects or time.monotonic() - last >= REPUSH_EVERY:
                reconnects = now  # a restarted server may hold an older account JWT
                self._dirty.set()
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            try:
                await self._store_pending()
                await self.push()
            except Unavailable as e:
                self.log.warning("bus revocations not pushed; retrying", extra={"error": str(e)})
                self._dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            delay = _RETRY_FIRST
            last = time.monotonic()
