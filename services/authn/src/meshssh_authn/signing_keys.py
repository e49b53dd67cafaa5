"""The embedded provider's signing key set and its rotation plan (pure, clock passed in).

Each key has a life in three phases, fixed when it is created:

1. **published** from ``created_at``: it is in the JWKS but signs nothing yet;
2. **signing** from ``signs_from`` until ``signs_until``;
3. **retired** until ``drop_after`` = ``signs_until`` + token lifetime + clock skew, when the
   last token it signed can no longer validate anywhere; then it leaves the JWKS.

:func:`plan_rotation` creates the successor at least ``publish_lead`` seconds before it
starts signing, so every validator has had the new key for that long when the first token
signed with it arrives. If maintenance runs late, the current key signs a little longer
rather than the successor signing early.

Example::

    policy = RotationPolicy(period=86400, publish_lead=3600, token_ttl=600, skew=60)
    keyset = plan_rotation(KeySet(), now, policy, "ES256") or KeySet()
    key = keyset.signer(now)
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

__all__ = [
    "KeySet",
    "PrivateKey",
    "RotationPolicy",
    "SigningKey",
    "generate_key",
    "load_private_key",
    "plan_rotation",
    "public_jwk",
    "sign",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class SigningKey(msgspec.Struct, frozen=True, kw_only=True):
    """One signing key with its whole schedule (stored in authn's private KV bucket)."""

    kid: str
    alg: str
    private_pem: str
    created_at: float
    signs_from: float
    signs_until: float
    drop_after: float


class KeySet(msgspec.Struct, frozen=True, kw_only=True):
    """Every key that is published, signing or retired-but-still-valid."""

    keys: tuple[SigningKey, ...] = ()

    def signer(self, now: float) -> SigningKey | None:
        """The key that signs at ``now`` (the most recent one whose window holds ``now``)."""
        live = [k for k in self.keys if k.signs_from <= now < k.signs_until]
        return max(live, key=lambda k: k.signs_from) if live else None

    def published(self, now: float) -> tuple[SigningKey, ...]:
        """The keys validators must know at ``now``."""
        return tuple(k for k in self.keys if now < k.drop_after)

    def next_event(self, now: float, publish_lead: float) -> float:
        """The next time :func:`plan_rotation` would change something (or ``now`` + 1 h)."""
        times = [k.drop_after for k in self.keys if k.drop_after > now]
        times += [k.signs_until - publish_lead for k in self.keys if k.signs_until > now]
        times += [k.signs_from for k in self.keys if k.signs_from > now]
        future = [t for t in times if t > now]
        return min(future, default=now + 3600.0)


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """How long keys sign and how long before and after that they are published."""

    period: float
    publish_lead: float
    token_ttl: float
    skew: float

    def retire_margin(self) -> float:
        """How long a key stays published after it stopped signing."""
        return self.token_ttl + self.skew


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: SigningKey) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid``, ``alg`` and ``use``; never private parts."""
    private = load_private_key(key.private_pem)
    algo = get_default_algorithms()[key.alg]
    jwk: dict[str, Any] = algo.to_jwk(private.public_key(), as_dict=True)
    for secret in ("d", "p", "q", "dp", "dq", "qi", "k"):
        jwk.pop(secret, None)
    jwk.update(kid=key.kid, alg=key.alg, use="sig")
    return jwk


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the ``kid``."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    canon = {m: jwk[m] for m in members[jwk["kty"]]}
    raw = json.dumps(canon, separators=(",", ":"), sort_keys=True).encode()
    return _b64(hashlib.sha256(raw).digest())


def load_private_key(pem: str) -> PrivateKey:
    """Load a PKCS#8 PEM private key of one of the supported kinds.

    Raises:
        ValueError: the PEM is not an RSA, EC or Ed25519 private key.
    """
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError(f"unsupported signing key type {type(key).__name__}")
    return key


def generate_key(
    alg: str, *, created_at: float, signs_from: float, signs_until: float, drop_after: float
) -> SigningKey:
    """A fresh key pair for ``alg`` (RS256: RSA-2048; ES256: P-256; EdDSA: Ed25519).

    Raises:
        ValueError: ``alg`` is not one the embedded provider signs with.
    """
    private: PrivateKey
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    algo = get_default_algorithms()[alg]
    kid = _thumbprint(algo.to_jwk(private.public_key(), as_dict=True))
    return SigningKey(
        kid=kid,
        alg=alg,
        private_pem=pem,
        created_at=created_at,
        signs_from=signs_from,
        signs_until=signs_until,
        drop_after=drop_after,
    )


def plan_rotation(keyset: KeySet, now: float, policy: RotationPolicy, alg: str) -> KeySet | None:
    """The key set as it must be at ``now``, or None when nothing needs to change.

    Drops keys past ``drop_after``. With no key left (a fresh install, or authn was away for
    longer than a key's whole life) a new key signs at once: nothing valid was signed before
    it. Otherwise the newest key that has started signing is the current one; once ``now``
    is within ``publish_lead`` of its end its successor is created, to sign from
    ``max(end, now + publish_lead)``, and the current key's window stretches to meet it; so
    a late run (even past the end) never lets a key sign before it has been published for
    ``publish_lead`` seconds.
    """
    margin = policy.retire_margin()
    keys = [k for k in keyset.keys if now < k.drop_after]
    changed = len(keys) != len(keyset.keys)
    started = [k for k in keys if k.signs_from <= now]
    if not started:
        fresh = generate_key(
            alg,
            created_at=now,
            signs_from=now,
            signs_until=now + policy.period,
            drop_after=now + policy.period + margin,
        )
        return KeySet(keys=(*keys, fresh))
    current = max(started, key=lambda k: k.signs_from)
    later = [k for k in keys if k.signs_from > current.signs_from]
    if later:
        start = min(k.signs_from for k in later)
        if current.signs_until >= start:
            return KeySet(keys=tuple(keys)) if changed else None
    elif now >= current.signs_until - policy.publish_lead:
        start = max(current.signs_until, now + policy.publish_lead)
        keys.append(
            generate_key(
                alg,
                created_at=now,
                signs_from=start,
                signs_until=start + policy.period,
                drop_after=start + policy.period + margin,
            )
        )
        changed = True
    else:
        return KeySet(keys=tuple(keys)) if changed else None
    if start > current.signs_until:  # no gap between the current key and its successor
        stretched = msgspec.structs.replace(current, signs_until=start, drop_after=start + margin)
        keys = [stretched if k.kid == current.kid else k for k in keys]
        changed = True
    return KeySet(keys=tuple(keys)) if changed else None


def sign(key: SigningKey, private: PrivateKey, claims: dict[str, Any], typ: str = "JWT") -> str:
    """A compact JWS of ``claims`` signed by ``key`` with its ``kid`` in the header."""
    return jwt.encode(claims, private, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})
