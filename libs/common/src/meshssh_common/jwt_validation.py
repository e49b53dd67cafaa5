"""Validating the OIDC JWTs users present as their SSH password (SPEC §6).

Checks, in order, each failure with its own :class:`RejectReason`:

1. size (refused at 16 KiB or more) and shape (three base64url segments, JSON header, no
   ``crit`` or unencoded-payload extension);
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
7. the user-id claim is a non-empty string; when it is ``email``, ``email_verified`` must be
   true (unless the config's ``require_email_verified`` is off): see :func:`check_user_claim`.

Speed: the key set is parsed once per validator into PyJWT's prepared key objects, indexed by
``kid`` and algorithm; a token is split and decoded once (strict base64url, msgspec JSON that
refuses NaN, Infinity and out-of-range numbers) and verified with PyJWT's algorithm objects.

Errors carry the detail for logs (expected vs actual ``iss``/``aud``) and a ``public`` text
that says what the user should do.

Example::

    validator = JwtValidator.from_snapshot(snapshot)
    token = validator.validate(password)        # raises TokenRejected
    token.user_id
"""

from __future__ import annotations

import binascii
import enum
import math
import re
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError, PyJWKError

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
    "check_user_claim",
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
_ALGORITHMS: dict[str, Algorithm] = {
    name: alg for name, alg in get_default_algorithms().items() if name in ALLOWED_ALGORITHMS
}
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")
_JSON = msgspec.json.Decoder()


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
    EMAIL_NOT_VERIFIED = "email_not_verified"
    # Per-peer tokens (meshssh_common.peer_tokens; sshd's replay cache):
    WRONG_AUDIENCE = "wrong_audience"
    TOO_LONG_LIVED = "too_long_lived"
    REPLAYED = "replayed"
    REPLAY_CACHE_FULL = "replay_cache_full"
    IDP_TOKEN_REFUSED = "idp_token_refused"


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
    RejectReason.EMAIL_NOT_VERIFIED: "Authentication failed: your identity provider has not "
    "verified your email address, which names you here; verify it there, then log in again",
    RejectReason.WRONG_AUDIENCE: "Authentication failed: this login token was issued for "
    "another peer; connect with `meshssh ssh` (it gets a token for each server)",
    RejectReason.REPLAYED: "Authentication failed: this login token was already used; "
    "connect again with `meshssh ssh` (it gets a fresh token for each connection)",
    RejectReason.REPLAY_CACHE_FULL: "Authentication failed: this server is taking too many "
    "logins right now; try again in a minute",
    RejectReason.IDP_TOKEN_REFUSED: "Authentication failed: this peer accepts only per-peer "
    "tokens, not your identity provider's token; connect with `meshssh ssh` (with the meshssh "
    "agent running), or ask an admin to start the peer with --accept-idp-tokens",
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
    """One usable JWK, parsed once: its prepared key per algorithm it may verify."""

    kid: str
    kty: str
    prepared: Mapping[str, Any]  # algorithm name -> PyJWT-prepared public key


def _parse_key(raw: Mapping[str, Any]) -> _Key | None:
    if raw.get("use", "sig") != "sig":
        return None
    try:
        key = jwt.PyJWK(dict(raw)).key
    except (PyJWKError, InvalidKeyError, ValueError, TypeError):
        return None  # one bad or unsupported key must not disable the others
    kty, crv, pinned = raw.get("kty"), raw.get("crv"), raw.get("alg")
    prepared: dict[str, Any] = {}
    for alg, (want_kty, want_crv) in _KEY_FOR_ALG.items():
        if kty != want_kty or (want_crv is not None and crv != want_crv):
            continue
        if pinned not in (None, alg):
            continue
        try:
            prepared[alg] = _ALGORITHMS[alg].prepare_key(key)
        except (InvalidKeyError, ValueError, TypeError):
            continue  # e.g. a P-384 key that claims P-256
    return _Key(str(raw.get("kid", "")), str(kty), prepared)


def _segment(segment: bytes, name: str) -> bytes:
    """Strict base64url (PyJWT's rules: up to two ``=``, canonical trailing bits)."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if (
        padding > 2
        or (padding and len(segment) % 4)
        or len(stripped) % 4 == 1
        or _BASE64URL.fullmatch(stripped) is None
    ):
        raise TokenRejected(RejectReason.MALFORMED, f"{name} is not base64url")
    try:
        decoded = urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as e:
        raise TokenRejected(RejectReason.MALFORMED, f"{name} is not base64url") from e
    if urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise TokenRejected(RejectReason.MALFORMED, f"{name} is not canonical base64url")
    return decoded


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = _JSON.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # msgspec: bad UTF-8 in a string
        raise TokenRejected(RejectReason.MALFORMED, f"{name} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise TokenRejected(RejectReason.MALFORMED, f"{name} is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(RejectReason.MALFORMED, f"claim {name} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise TokenRejected(RejectReason.MALFORMED, f"claim {name} is not finite: {value!r}")
    return number


def check_user_claim(claims: Mapping[str, Any], claim: str, config: JwtConfig) -> str:
    """The user id in ``claim``; for ``email``, only with ``email_verified`` true.

    ``email_verified`` must be the JSON ``true`` (or the string ``"true"``, which some
    providers send); anything else, missing included, is refused when the config requires it.

    Raises:
        TokenRejected: the claim is missing or empty (``missing_claim``), or it is ``email``
            and the address is not verified (``email_not_verified``).
    """
    user_id = claims.get(claim)
    if not isinstance(user_id, str) or not user_id:
        raise TokenRejected(RejectReason.MISSING_CLAIM, f"user-id claim {claim!r} missing or empty")
    if claim == "email" and config.require_email_verified:
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":
            raise TokenRejected(
                RejectReason.EMAIL_NOT_VERIFIED,
                f"user id is the email claim but email_verified is {verified!r}",
            )
    return user_id


class JwtValidator:
    """Validates tokens against one JWT config and one key set (immutable; rebuild on change)."""

    def __init__(self, config: JwtConfig, keys: Sequence[Mapping[str, Any]]) -> None:
        self.config = config
        parsed = [k for k in map(_parse_key, keys) if k is not None]
        self._all = tuple(parsed)
        by_kid: dict[str, list[_Key]] = {}
        for key in parsed:
            by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(ks) for kid, ks in by_kid.items()}
        self._audiences = frozenset(config.audiences)

    @classmethod
    def from_snapshot(cls, snapshot: JwksSnapshot, config: JwtConfig | None = None) -> JwtValidator:
        """A validator for the keys in ``snapshot`` and ``config`` (default: the snapshot's)."""
        return cls(config or snapshot.jwt, snapshot.keys)

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``kid`` of every usable key."""
        return frozenset(kid for kid in self._by_kid if kid)

    def has_kid(self, kid: str) -> bool:
        """Whether a usable key has this ``kid``."""
        return kid in self._by_kid

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
        if len(token) >= MAX_TOKEN_BYTES:
            raise TokenRejected(RejectReason.TOO_LARGE, f"token of {len(token)} characters")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError as e:
            size = len(token.encode("utf-8", "surrogatepass"))
            if size >= MAX_TOKEN_BYTES:
                raise TokenRejected(RejectReason.TOO_LARGE, f"token of {size} bytes") from e
            raise TokenRejected(RejectReason.MALFORMED, "token is not ASCII") from e
        parts = raw.split(b".")
        if len(parts) != 3:
            raise TokenRejected(RejectReason.MALFORMED, f"{len(parts)} segments, not 3")
        header = _json_object(_segment(parts[0], "header"), "header")
        payload = _segment(parts[1], "payload")
        signature = _segment(parts[2], "signature")
        if "crit" in header or header.get("b64", True) is not True:
            raise TokenRejected(RejectReason.MALFORMED, "unsupported critical header extension")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise TokenRejected(RejectReason.BAD_ALG, f"algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected(RejectReason.MALFORMED, f"kid is not a string: {kid!r}")
        signing_input = raw[: len(parts[0]) + 1 + len(parts[1])]
        used = self._verify(alg, kid, signing_input, signature)
        claims = _json_object(payload, "payload")
        return self._check_claims(claims, used, now)

    def _verify(self, alg: str, kid: str | None, signing_input: bytes, signature: bytes) -> str:
        """The kid of the key whose signature verifies; raises for every other outcome."""
        if kid is not None:
            keys = self._by_kid.get(kid)
            if keys is None:
                known = ", ".join(sorted(self.key_ids)) or "none"
                raise TokenRejected(RejectReason.UNKNOWN_KID, f"kid {kid!r} not in keys ({known})")
        else:
            keys = self._all
        algorithm = _ALGORITHMS[alg]
        tried = False
        for key in keys:
            prepared = key.prepared.get(alg)
            if prepared is None:
                continue
            tried = True
            try:
                if algorithm.verify(signing_input, prepared, signature):
                    return key.kid
            except (ValueError, TypeError):
                continue  # a signature of the wrong shape for this key does not verify
        if not tried:
            kty = _KEY_FOR_ALG[alg][0]
            raise TokenRejected(
                RejectReason.BAD_ALG, f"no {kty} key fits algorithm {alg} (kid {kid!r})"
            )
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
        if isinstance(aud, str):
            matches = aud in self._audiences
        elif isinstance(aud, list):
            matches = any(isinstance(a, str) and a in self._audiences for a in aud)
        else:
            matches = False
        if not matches:
            raise TokenRejected(
                RejectReason.BAD_AUDIENCE,
                f"expected aud in {list(cfg.audiences)!r}, got {aud!r}",
            )
        user_id = check_user_claim(claims, cfg.user_id_claim, cfg)
        return ValidatedToken(user_id, claims, kid, iat, exp)
