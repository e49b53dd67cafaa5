"""The embedded provider's signing keys, shared by every authn replica through JetStream KV.

The key set lives in bucket ``meshssh-authn`` under ``signing-keys``. Any replica may rotate
it: each one plans the rotation from what it read and writes with compare-and-set, so two
replicas that race create one successor, not two. Every replica watches the key and keeps
the decoded set (and loaded private keys) in memory for signing.

Example::

    ring = KeyRing(TypedKV(kv, KeySet), policy, "ES256", log=log)
    await ring.ensure()
    key, private = await ring.signing_key()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshssh_authn.signing_keys import (
    KeySet,
    PrivateKey,
    RotationPolicy,
    SigningKey,
    load_private_key,
    plan_rotation,
    public_jwk,
)
from meshssh_common import subjects
from meshssh_common.errors import Conflict, Unavailable
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger

__all__ = ["KeyRing"]

_KEY = subjects.AUTHN_SIGNING_KEYS_KEY
_MAX_SLEEP = 60.0


class KeyRing:
    """A replica's view of the shared signing key set, with rotation and signing access."""

    def __init__(
        self,
        kv: TypedKV[KeySet],
        policy: RotationPolicy,
        alg: str,
        *,
        log: BoundLogger,
        clock: Callable[[], float] = time.time,
        on_rotation: Callable[[], None] | None = None,
    ) -> None:
        self._kv = kv
        self._policy = policy
        self._alg = alg
        self._log = log
        self._clock = clock
        self._on_rotation = on_rotation
        self._keys = KeySet()
        self._private: dict[str, PrivateKey] = {}
        self._jwks: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        self.on_change: Callable[[], Awaitable[None]] | None = None
        """Runs after the key set changed (here or in another replica): publish the JWKS."""

    @property
    def keys(self) -> KeySet:
        """The key set as last read or written by this replica."""
        return self._keys

    def _adopt(self, keys: KeySet) -> None:
        self._keys = keys
        kids = {k.kid for k in keys.keys}
        self._private = {kid: pk for kid, pk in self._private.items() if kid in kids}
        self._jwks = {kid: jwk for kid, jwk in self._jwks.items() if kid in kids}

    async def ensure(self) -> KeySet:
        """Read the shared key set and rotate it if it is due; returns the current set.

        When this call rotated the set, :attr:`on_change` has run (the new JWKS is
        published) before it returns, so nothing signs with a key before it is published.

        Raises:
            Unavailable: JetStream did not answer, or the write kept losing races.
        """
        async with self._lock:
            keys, rotated = await self._ensure_locked()
        if rotated and self.on_change is not None:
            await self.on_change()
        return keys

    async def _ensure_locked(self) -> tuple[KeySet, bool]:
        for _ in range(5):
            now = self._clock()
            entry = await self._kv.get(_KEY)
            stored = entry.value if entry is not None else KeySet()
            planned = plan_rotation(stored, now, self._policy, self._alg)
            if planned is None:
                self._adopt(stored)
                return stored, False
            try:
                if entry is None:
                    await self._kv.create(_KEY, planned)
                else:
                    await self._kv.update(_KEY, planned, last=entry.revision)
            except Conflict:
                continue  # another replica rotated first; plan again from its result
            old = {k.kid for k in stored.keys}
            new = [k.kid for k in planned.keys if k.kid not in old]
            gone = sorted(old - {k.kid for k in planned.keys})
            self._log.info("signing keys rotated", extra={"added": new, "dropped": gone})
            if self._on_rotation is not None:
                self._on_rotation()
            self._adopt(planned)
            return planned, True
        raise Unavailable("signing key set kept changing under concurrent rotation")

    def _private_key(self, key: SigningKey) -> PrivateKey:
        private = self._private.get(key.kid)
        if private is None:
            private = self._private[key.kid] = load_private_key(key.private_pem)
        return private

    async def signing_key(self) -> tuple[SigningKey, PrivateKey]:
        """The key that signs now (rotating first if the set has none) and its private key.

        Raises:
            Unavailable: no signing key could be established.
        """
        key = self._keys.signer(self._clock())
        if key is None:
            key = (await self.ensure()).signer(self._clock())
        if key is None:
            raise Unavailable("no signing key is available")
        return key, self._private_key(key)

    def public_jwks(self) -> tuple[dict[str, Any], ...]:
        """The public JWKs every validator must know now (published, signing, retired)."""
        out = []
        for key in self._keys.published(self._clock()):
            jwk = self._jwks.get(key.kid)
            if jwk is None:
                jwk = self._jwks[key.kid] = public_jwk(key)
            out.append(dict(jwk))
        return tuple(out)

    def seconds_to_next_event(self) -> float:
        """Seconds until the key set's published content next changes on its own."""
        now = self._clock()
        return max(0.0, self._keys.next_event(now, self._policy.publish_lead) - now)

    async def run(self) -> None:
        """Follow the shared key set until cancelled.

        Two loops: a KV watch (another replica rotated: adopt it and run :attr:`on_change`)
        and a timer that rotates when due (:meth:`ensure` runs :attr:`on_change` itself).
        """
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch())
            tg.create_task(self._tick())

    async def _watch(self) -> None:
        while True:  # a watch that breaks (NATS away) is started again
            try:
                async for ev in self._kv.watch(_KEY):
                    if ev.initial_done or ev.value is None or ev.value == self._keys:
                        continue
                    self._adopt(ev.value)
                    if self.on_change is not None:
                        await self.on_change()
            except Exception:
                self._log.exception("signing key watch failed; restarting it")
            await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(_MAX_SLEEP, self.seconds_to_next_event() + 0.05))
            try:
                await self.ensure()
            except Exception:
                self._log.exception("signing key maintenance failed; retrying")
                await asyncio.sleep(1.0)
