"""Validating per-peer tokens: authn's exchange tokens for exactly one target peer (SPEC §6).

A client's agent trades the user's IdP token at authn for a token signed by authn's exchange
key (EdDSA; public keys in ``JwksSnapshot.exchange_keys``). A server validates such a token
only here, never as an IdP token, and an IdP token never here (the key sets are disjoint:
which set a token belongs to is decided by its header ``kid``, see :func:`exchange_kids`).

Checks, on top of :class:`~meshssh_common.jwt_validation.JwtValidator`'s (shape, algorithm,
signature, ``exp``/``nbf``/``iat`` with the skew, the user-id claim), each with its reason:

- signature by an exchange key, EdDSA only (a non-OKP key in the set is ignored);
- ``iss`` equals the snapshot's ``exchange_issuer`` (``bad_issuer``; none published: every
  token is refused);
- ``aud`` is exactly ``meshssh:peer:<own peer id>``, as a string (``wrong_audience``);
- ``iat`` is the IdP token's original one: the map's max token age applies to it;
- ``exp`` is at most :data:`MAX_LIFETIME` seconds ahead (plus skew; ``too_long_lived``), which
  bounds how long a replay cache must remember the token;
- ``jti`` is a non-empty string of at most :data:`MAX_JTI` characters (``missing_claim``).

Whether the ``jti`` was seen before is the caller's business (sshd's replay cache).

Example::

    validator = PeerTokenValidator(netmap.peer.jwt, snapshot, peer_id="p1")
    token = validator.validate(password)     # raises TokenRejected
    token.jti, token.token.user_id
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from meshssh_common.jwt_validation import JwtValidator, RejectReason, TokenRejected, ValidatedToken
from meshssh_common.wire.authn import JwksSnapshot, peer_audience
from meshssh_common.wire.netmap import JwtConfig

__all__ = ["MAX_JTI", "MAX_LIFETIME", "PeerToken", "PeerTokenValidator", "exchange_kids"]

MAX_LIFETIME = 120  # seconds from now to exp, at most (authn issues exactly this, or less)
MAX_JTI = 128


def exchange_kids(snapshot: JwksSnapshot | None) -> frozenset[str]:
    """The ``kid`` of every exchange key in ``snapshot`` (empty without one)."""
    if snapshot is None:
        return frozenset()
    return frozenset(str(k["kid"]) for k in snapshot.exchange_keys if k.get("kid"))


@dataclass(frozen=True, slots=True)
class PeerToken:
    """A per-peer token that passed every check but the replay check."""

    token: ValidatedToken
    jti: str


class PeerTokenValidator:
    """Validates per-peer tokens for one peer, one JWT config and one exchange key set.

    Args:
        config: the peer's JWT config (from its map): max token age, skew and the user-id
            claim apply; its issuer and audiences do not (an IdP's are not authn's).
        snapshot: the JWKS snapshot holding ``exchange_issuer`` and ``exchange_keys``.
        peer_id: this peer; the only audience accepted is ``peer_audience(peer_id)``.
    """

    def __init__(self, config: JwtConfig, snapshot: JwksSnapshot, *, peer_id: str) -> None:
        self.audience = peer_audience(peer_id)
        self.issuer = snapshot.exchange_issuer
        keys: list[Mapping[str, Any]] = [
            k for k in snapshot.exchange_keys if k.get("kty") == "OKP" and k.get("kid")
        ]
        peer_config = msgspec.structs.replace(
            config, issuer=self.issuer, audiences=(self.audience,)
        )
        self._inner = JwtValidator(peer_config, keys)
        self._skew = float(config.clock_skew)

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``kid`` of every usable exchange key."""
        return self._inner.key_ids

    def validate(self, token: str, *, now: float | None = None) -> PeerToken:
        """Check ``token`` as a per-peer token (see the module docstring).

        Raises:
            TokenRejected: the first check that failed, with its reason.
        """
        now = time.time() if now is None else now
        if not self.issuer:
            raise TokenRejected(RejectReason.BAD_ISSUER, "no exchange issuer is published")
        try:
            checked = self._inner.validate(token, now=now)
        except TokenRejected as e:
            if e.reason is RejectReason.BAD_AUDIENCE:
                raise TokenRejected(RejectReason.WRONG_AUDIENCE, e.detail) from e
            raise
        aud = checked.claims.get("aud")
        if aud != self.audience:  # a list naming this peer and others is not a per-peer token
            raise TokenRejected(
                RejectReason.WRONG_AUDIENCE, f"expected aud {self.audience!r}, got {aud!r}"
            )
        if checked.expires_at > now + MAX_LIFETIME + self._skew:
            raise TokenRejected(
                RejectReason.TOO_LONG_LIVED,
                f"exp is {checked.expires_at - now:.0f}s ahead; at most {MAX_LIFETIME}s",
            )
        jti = checked.claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
            raise TokenRejected(
                RejectReason.MISSING_CLAIM, f"claim jti missing or invalid: {str(jti)[:40]!r}"
            )
        return PeerToken(checked, jti)
