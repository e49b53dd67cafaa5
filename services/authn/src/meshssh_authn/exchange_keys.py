"""The exchange key: the Ed25519 key authn signs per-peer tokens with (SPEC §6, issue 15).

One key for all replicas, kept in the authn-private bucket ``meshssh-authn`` under
``exchange-keys`` as a list of private JWKs (kid ``x-<16 hex>``). Whichever replica finds the
key missing first creates it (KV create is compare-and-set; the losers read the winner's key);
every replica follows the key so a change reaches all of them. The public part of each key is
published in :class:`~meshssh_common.wire.JwksSnapshot` ``exchange_keys``.

Example::

    keys = ExchangeKeys(TypedKV(state, ExchangeKeySet), log=log)
    await keys.ensure()
    kid, private = keys.signing_key()
    keys.public_jwks()          # ({"kty": "OKP", "crv": "Ed25519", "x": ..., "kid": ...},)
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.errors import Conflict, Unavailable
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger

__all__ = ["ExchangeKeySet", "ExchangeKeys", "new_exchange_jwk"]

_KEY = subjects.AUTHN_EXCHANGE_KEYS_KEY
_PUBLIC_FIELDS = ("kty", "crv", "x", "kid", "alg", "use")


class ExchangeKeySet(msgspec.Struct, frozen=True, kw_only=True):
    """The private exchange JWKs; the first one signs."""

    keys: tuple[dict[str, Any], ...] = ()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_exchange_jwk() -> dict[str, Any]:
    """A fresh private Ed25519 JWK with kid ``x-`` + 16 hex of the public key's SHA-256."""
    key = Ed25519PrivateKey.generate()
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    d = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    kid = "x-" + hashlib.sha256(x).hexdigest()[:16]
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(x),
        "d": _b64(d),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    }


def _private(jwk: dict[str, Any]) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_unb64(str(jwk["d"])))


class ExchangeKeys:
    """The replica's view of the shared exchange key set."""

    def __init__(
        self,
        store: TypedKV[ExchangeKeySet],
        *,
        log: BoundLogger,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._log = log
        self.on_change = on_change
        self._set = ExchangeKeySet()
        self._signing: tuple[str, Ed25519PrivateKey] | None = None

    async def ensure(self) -> None:
        """Load the key set, creating it first when no replica has yet.

        Raises:
            Unavailable: KV did not answer, or the stored set holds no usable key.
        """
        for _ in range(5):
            entry = await self._store.get(_KEY)
            if entry is not None:
                self._use(entry.value)
                return
            try:
                await self._store.create(_KEY, ExchangeKeySet(keys=(new_exchange_jwk(),)))
                self._log.info("exchange key created")
            except Conflict:
                continue  # another replica got there first: read its key
        raise Unavailable("exchange key set could not be read or created")

    async def run(self, nc: NATS) -> None:
        """Follow the stored key set until cancelled (a change is used at once)."""
        async for event in self._store.follow(_KEY, nc):
            if event.value is None or event.value == self._set:
                continue
            try:
                self._use(event.value)
            except Unavailable as e:
                self._log.warning("unusable exchange key set ignored", extra={"error": str(e)})
                continue
            self._log.info("exchange key set changed", extra={"kids": list(self.kids)})
            if self.on_change is not None:
                await self.on_change()

    def _use(self, keys: ExchangeKeySet) -> None:
        try:
            first = keys.keys[0]
            signing = (str(first["kid"]), _private(first))
        except (IndexError, KeyError, ValueError, TypeError) as e:
            raise Unavailable(f"exchange key set has no usable key: {e}") from e
        self._set, self._signing = keys, signing

    @property
    def kids(self) -> tuple[str, ...]:
        """The ``kid`` of every exchange key."""
        return tuple(str(k.get("kid", "")) for k in self._set.keys)

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The kid and private key that sign now.

        Raises:
            Unavailable: :meth:`ensure` has not loaded a key.
        """
        if self._signing is None:
            raise Unavailable("no exchange key loaded")
        return self._signing

    def public_jwks(self) -> tuple[dict[str, Any], ...]:
        """The public JWKs to publish (``d`` never leaves this module)."""
        return tuple({f: k[f] for f in _PUBLIC_FIELDS if f in k} for k in self._set.keys)
