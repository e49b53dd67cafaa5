"""Validating the OIDC JWTs users present as their SSH password (SPEC §6).

Checks, in order, each failure with its own :class:`RejectReason`:

1. size (refused at 16 KiB or more) and shape (three base64url segments, JSON header);
2. algorithm: only RS256/384/512, PS256/384/512, ES256/384 and EdDSA (never ``none`` or HS*),
   and it must fit the key's type (no algorithm confusion);
3. key by ``kid`` from the distributed JWKS; a token without ``kid`` is tried against the
   compatible keys (providers with one key omit it); an unknown ``kid`` is reported as such so
   the caller can ask authn for one refresh;
4. signature;
5. ``exp`` not passed, ``nbf`` reached, ``iat`` present, not in the future and not older than
   the max token age; the clock-skew leeway applies to every time check;
6. ``iss`` equals the configured issuer; ``aud`` intersects the configured audiences (with none
   configured, every token is refused: fail closed);
7. the user-id claim is a non-empty string.

Errors carry the detail for logs (expected vs actual ``iss``/``aud``) and a ``public`` text
that says what the user should do.

Example::

    validator = JwtValidator.from_snapshot(snapshot)
    token = validator.validate(password)        # raises TokenRejected
    token.user_id
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import DecodeError, InvalidKeyError, InvalidSignatureError, PyJWKError

from meshssh_common.errors import Denied
from meshssh_common.wire.authn import JwksSnapshot
from meshssh_common.wire.netmap import JwtConfig

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "JwtValidator",
    "RejectReason",
    "TokenRejected",
    "ValidatedToken",
]

MAX_TOKEN_BYTES = 16 * 1024
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)
# Which JWK key type (and EC curve) each algorithm may be verified with.
_KEY_FOR_ALG: dict[str, tuple[str, str | None]] = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), ("RSA", None)),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", None),
}


class RejectReason(enum.StrEnum):
    """Why a token was refused; values are bounded metric labels."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    BAD_ALG = "bad_alg"
    UNKNOWN_KID = "unknown_kid"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ISSUED_IN_FUTURE = "issued_in_future"
    TOO_OLD = "too_old"
    BAD_ISSUER = "bad_issuer"
    BAD_AUDIENCE = "bad_audience"
    MISSING_CLAIM = "missing_claim"


_LOGIN_AGAIN = "run `meshssh login` to get a fresh token and try again"
_PUBLIC: dict[RejectReason, str] = {
    RejectReason.EXPIRED: f"Authentication failed: your token has expired; {_LOGIN_AGAIN}",
    RejectReason.TOO_OLD: f"Authentication failed: your token is too old; {_LOGIN_AGAIN}",
    RejectReason.NOT_YET_VALID: "Authentication failed: token not valid yet; check the clock",
    RejectReason.ISSUED_IN_FUTURE: "Authentication failed: token issued in the future; "
    "check the clocks of this machine and your identity provider",
    RejectReason.UNKNOWN_KID: "Authentication failed: the token's signing key is unknown; "
    "try again in a minute",
    RejectReason.BAD_ISSUER: "Authentication failed: token from the wrong identity provider",
    RejectReason.BAD_AUDIENCE: "Authentication failed: token not meant for meshssh "
    "(audience); check the client configuration",
}
_PUBLIC_DEFAULT = f"Authentication failed: invalid token; {_LOGIN_AGAIN}"


class TokenRejected(Denied):
    """A token failed one check; ``reason`` says which, ``public`` what the user should do."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}", public=_PUBLIC.get(reason, _PUBLIC_DEFAULT))
        self.reason: RejectReason = reason  # narrower than Denied.reason: a bounded label
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ValidatedToken:
    """A token that passed every check."""

    user_id: str
    claims: dict[str, Any]
    kid: str
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    kty: str
    crv: str | None
    alg: str | None
    key: Any


def _parse_keys(keys: Sequence[Mapping[str, Any]]) -> list[_Key]:
    parsed: list[_Key] = []
    for raw in keys:
        if raw.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(dict(raw))
        except (PyJWKError, InvalidKeyError, ValueError, TypeError):
            continue  # one bad or unsupported key must not disable the others
        parsed.append(
            _Key(
                str(raw.get("kid", "")),
                str(raw.get("kty")),
                raw.get("crv"),
                raw.get("alg"),
                jwk.key,
            )
        )
    return parsed


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(RejectReason.MALFORMED, f"claim {name} is not a number: {value!r}")
    return float(value)


class JwtValidator:
    """Validates tokens against one JWT config and one key set (immutable; rebuild on change)."""

    def __init__(self, config: JwtConfig, keys: Sequence[Mapping[str, Any]]) -> None:
        self.config = config
        self._keys = _parse_keys(keys)

    @classmethod
    def from_snapshot(cls, snapshot: JwksSnapshot, config: JwtConfig | None = None) -> JwtValidator:
        """A validator for the keys in ``snapshot`` and ``config`` (default: the snapshot's)."""
        return cls(config or snapshot.jwt, snapshot.keys)

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``kid`` of every usable key."""
        return frozenset(k.kid for k in self._keys if k.kid)

    def validate(self, token: str, *, now: float | None = None) -> ValidatedToken:
        """Check ``token`` completely; see the module docstring for the order of checks.

        Args:
            token: the compact JWT as the client sent it.
            now: the current time (seconds since the epoch); the wall clock when None.

        Returns:
            The validated token with its user id.

        Raises:
            TokenRejected: the first check that failed, with its reason.
        """
        now = time.time() if now is None else now
        if len(token.encode("utf-8", "surrogatepass")) >= MAX_TOKEN_BYTES:
            raise TokenRejected(RejectReason.TOO_LARGE, f"token of {len(token)} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except (DecodeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            raise TokenRejected(RejectReason.MALFORMED, f"cannot parse token: {e}") from e
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRejected(RejectReason.BAD_ALG, f"algorithm {alg!r} is not allowed")
        claims, kid = self._verify_signature(token, str(alg), header.get("kid"))
        return self._check_claims(claims, kid, now)

    def _candidates(self, alg: str, kid: Any) -> list[_Key]:
        kty, crv = _KEY_FOR_ALG[alg]
        if kid is not None:
            matching = [k for k in self._keys if k.kid == str(kid)]
            if not matching:
                known = ", ".join(sorted(self.key_ids)) or "none"
                raise TokenRejected(RejectReason.UNKNOWN_KID, f"kid {kid!r} not in keys ({known})")
        else:
            matching = list(self._keys)
        usable = [
            k for k in matching
            if k.kty == kty and (crv is None or k.crv == crv) and (k.alg in (None, alg))
        ]  # fmt: skip
        if not usable:
            raise TokenRejected(
                RejectReason.BAD_ALG, f"no {kty} key fits algorithm {alg} (kid {kid!r})"
            )
        return usable

    def _verify_signature(self, token: str, alg: str, kid: Any) -> tuple[dict[str, Any], str]:
        options = {"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                   "verify_iat": False, "verify_aud": False, "verify_iss": False,
                   "require": []}  # fmt: skip
        for key in self._candidates(alg, kid):
            try:
                claims = jwt.decode(token, key.key, algorithms=[alg], options=options)  # type: ignore[arg-type]
            except InvalidSignatureError:
                continue
            except (DecodeError, ValueError, TypeError) as e:
                raise TokenRejected(RejectReason.MALFORMED, f"cannot decode token: {e}") from e
            if not isinstance(claims, dict):
                raise TokenRejected(RejectReason.MALFORMED, "claims are not a JSON object")
            return claims, key.kid
        raise TokenRejected(RejectReason.BAD_SIGNATURE, f"signature does not verify (kid {kid!r})")

    def _check_claims(self, claims: dict[str, Any], kid: str, now: float) -> ValidatedToken:
        cfg = self.config
        skew = float(cfg.clock_skew)
        exp = _number(claims, "exp")
        if exp is None:
            raise TokenRejected(RejectReason.MISSING_CLAIM, "claim exp is missing")
        if now >= exp + skew:
            raise TokenRejected(
                RejectReason.EXPIRED, f"expired {now - exp:.0f}s ago (skew {skew:.0f}s)"
            )
        nbf = _number(claims, "nbf")
        if nbf is not None and nbf > now + skew:
            raise TokenRejected(RejectReason.NOT_YET_VALID, f"nbf is {nbf - now:.0f}s ahead")
        iat = _number(claims, "iat")
        if iat is None:
            raise TokenRejected(RejectReason.MISSING_CLAIM, "claim iat is missing")
        if iat > now + skew:
            raise TokenRejected(RejectReason.ISSUED_IN_FUTURE, f"iat is {iat - now:.0f}s ahead")
        age = now - iat
        if age > cfg.max_token_age + skew:
            raise TokenRejected(
                RejectReason.TOO_OLD, f"issued {age:.0f}s ago; max age {cfg.max_token_age}s"
            )
        iss = claims.get("iss")
        if iss != cfg.issuer:
            raise TokenRejected(
                RejectReason.BAD_ISSUER, f"expected iss {cfg.issuer!r}, got {iss!r}"
            )
        aud = claims.get("aud")
        token_aud = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not cfg.audiences or not set(map(str, token_aud)) & set(cfg.audiences):
            raise TokenRejected(
                RejectReason.BAD_AUDIENCE,
                f"expected aud in {list(cfg.audiences)!r}, got {aud!r}",
            )
        user_id = claims.get(cfg.user_id_claim)
        if not isinstance(user_id, str) or not user_id:
            raise TokenRejected(
                RejectReason.MISSING_CLAIM, f"user-id claim {cfg.user_id_claim!r} missing or empty"
            )
        return ValidatedToken(user_id, claims, kid, iat, exp)
