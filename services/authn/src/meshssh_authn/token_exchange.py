"""Token exchange (RFC 8693 shape): an IdP token in, a per-peer token out (SPEC §6, issue 15).

An agent sends its user's IdP token and the target peer's id on
``meshssh.authn.v1.req.token-exchange.<requesting peer>`` (the bus lets a peer publish only its
own). authn validates the token exactly as an SSH server validates an IdP token (the
:class:`JwtValidator` of its own published snapshot: iss, aud, exp, iat/max age, user claim,
email_verified) and refuses a token signed by an exchange key (no re-exchange). The answer is
signed with the exchange key (EdDSA): ``aud`` = ``meshssh:peer:<target>``, ``exp`` at most
120 s ahead (never past the original), a random ``jti``, the user claim and the ORIGINAL
``iat`` (and ``auth_time``), so a captured token is good for one peer, once, briefly.

Each requesting peer has a token bucket (``--exchange-rate``/``--exchange-burst``); beyond it
the reply is ``rate_limited`` ("429"). Tokens are never logged.

Example::

    exchanger = TokenExchanger(snapshots, keys, issuer="urn:meshssh:authn", ...)
    reply = await exchanger.handle(TokenExchangeRequest(...), "meshssh.authn.v1.req...p1")
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import jwt
import msgspec

from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.exchange_keys import ExchangeKeys
from meshssh_common import subjects
from meshssh_common.errors import (
    BadRequest,
    Denied,
    MeshError,
    RateLimited,
    Unavailable,
    WireError,
)
from meshssh_common.jwt_validation import JwtValidator, TokenRejected, ValidatedToken
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import JwksSnapshot, TokenExchangeReply, TokenExchangeRequest
from meshssh_common.wire.authn import JWT_TOKEN_TYPE, peer_audience

__all__ = ["EXCHANGED_TTL", "PeerBuckets", "Reexchanged", "TokenExchanger", "check_peer_id"]

EXCHANGED_TTL: Final = 120  # seconds a per-peer token lives at most
_PREFIX: Final = subjects.AUTHN_TOKEN_EXCHANGE_ALL[:-1]  # "...token-exchange."
_PEER_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # wire.base.PeerId
_SNAPSHOT_CACHE: Final = 1.0  # seconds the published snapshot is reused between exchanges
_MAX_PEERS: Final = 10_000  # token buckets kept (least recently used go first)


class Reexchanged(Denied):
    """The subject token is itself a per-peer token (signed by an exchange key)."""


def check_peer_id(peer_id: str) -> str:
    """``peer_id`` if it is a peer id's syntax.

    Raises:
        BadRequest: it is not.
    """
    if not _PEER_ID.fullmatch(peer_id):
        raise BadRequest(f"invalid peer id {peer_id[:70]!r}")
    return peer_id


def requester_of(subject: str, prefix: str) -> str:
    """The requesting peer: the last token of a ``<prefix><peer>`` subject.

    The bus lets only that peer publish such a subject.

    Raises:
        BadRequest: the subject names no peer.
    """
    requester = subject[len(prefix) :] if subject.startswith(prefix) else ""
    if not requester:
        raise BadRequest("the subject names no requesting peer")
    return requester


class PeerBuckets:
    """One token bucket per requesting peer (bounded, least recently used dropped)."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, peer: str) -> bool:
        """Spend one token of ``peer``'s bucket; False when it is empty."""
        now = self._clock()
        level, at = self._buckets.pop(peer, (self._burst, now))
        level = min(self._burst, level + (now - at) * self._rate)
        ok = level >= 1.0
        self._buckets[peer] = (level - 1.0 if ok else level, now)
        while len(self._buckets) > _MAX_PEERS:
            self._buckets.popitem(last=False)
        return ok


def _jti() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def _header_kid(token: str) -> str | None:
    try:
        head = token.split(".", 1)[0]
        header = msgspec.json.decode(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, msgspec.DecodeError):
        return None  # the validator refuses it with its own reason
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


class TokenExchanger:
    """Validates IdP tokens and mints per-peer tokens with the exchange key."""

    def __init__(
        self,
        snapshots: TypedKV[JwksSnapshot],
        keys: ExchangeKeys,
        *,
        issuer: str,
        buckets: PeerBuckets,
        metrics: AuthnMetrics,
        log: BoundLogger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshots = snapshots
        self._keys = keys
        self._issuer = issuer
        self._buckets = buckets
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._cached: tuple[float, int, JwtValidator] | None = None

    async def handle(self, req: TokenExchangeRequest, subject: str) -> TokenExchangeReply:
        """The bus endpoint: rate-limit by the requesting peer, then :meth:`exchange`.

        Raises:
            RateLimited: the requesting peer is over its rate.
            BadRequest: not a JWT exchange, or the subject names no peer.
            Denied: the subject token is refused (its reason in the message).
            Unavailable: no JWKS snapshot or exchange key yet.
        """
        started = time.perf_counter()
        requester = ""
        try:
            requester = requester_of(subject, _PREFIX)
            if not self._buckets.take(requester):
                self._metrics.exchanges.labels(result="rate_limited").inc()
                self._log.warning("token exchange rate limited", extra={"peer": requester})
                raise RateLimited("429 too many token exchanges from this peer; slow down")
            reply, token = await self._exchange(req, requester)
        except RateLimited:
            raise
        except MeshError as e:
            result = "refused" if isinstance(e, Denied) else e.code
            if isinstance(e, Reexchanged):
                result = "reexchange"
            self._metrics.exchanges.labels(result=result).inc()
            self._log.info(
                "token exchange refused",
                extra={"peer": requester, "target": req.target_peer, "error": str(e)},
            )
            raise
        finally:
            self._metrics.exchange_seconds.observe(time.perf_counter() - started)
        self._metrics.exchanges.labels(result="ok").inc()
        self._log.info(
            "token exchanged",
            extra={"peer": requester, "target": req.target_peer, "user": token.user_id},
        )
        return reply

    async def exchange(self, subject_token: str, target_peer: str) -> TokenExchangeReply:
        """Validate ``subject_token`` and mint a per-peer token for ``target_peer`` (no limit).

        Raises:
            Denied: the token is refused; Unavailable: nothing to validate or sign with.
        """
        req = TokenExchangeRequest(
            subject_token=subject_token, target_peer=check_peer_id(target_peer)
        )
        reply, _ = await self._exchange(req, "")
        return reply

    async def _exchange(
        self, req: TokenExchangeRequest, requester: str
    ) -> tuple[TokenExchangeReply, ValidatedToken]:
        if req.subject_token_type != JWT_TOKEN_TYPE:
            raise BadRequest(f"subject_token_type must be {JWT_TOKEN_TYPE}")
        kid = _header_kid(req.subject_token)
        if kid is not None and kid in self._keys.kids:
            msg = "a per-peer token cannot be exchanged again (re-exchange refused)"
            raise Reexchanged(msg, public=msg)
        validator = await self._validator()
        now = self._clock()
        try:
            validated = validator.validate(req.subject_token, now=now)
        except TokenRejected as e:
            raise Denied(
                f"subject token refused: {e}",
                public=f"subject token refused ({e.reason.value}): {e.public}",
            ) from e
        return self._mint(validated, req.target_peer, now), validated

    async def _validator(self) -> JwtValidator:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < _SNAPSHOT_CACHE:
            return self._cached[2]
        try:
            entry = await self._snapshots.get(subjects.JWKS_KEY)
        except WireError as e:  # not signed by this replica's key: nothing to trust
            raise Unavailable(f"the published JWKS document does not verify: {e}") from e
        except Unavailable:
            if self._cached is None:
                raise
            # JetStream is away (a stream leader election): the document authn itself
            # published last stays good; logins go on through the outage.
            return self._cached[2]
        if entry is None:
            raise Unavailable("no JWKS snapshot published yet")
        if self._cached is not None and self._cached[1] == entry.revision:
            validator = self._cached[2]
        else:
            validator = JwtValidator.from_snapshot(entry.value)
        self._cached = (now, entry.revision, validator)
        return validator

    def _mint(self, token: ValidatedToken, target: str, now: float) -> TokenExchangeReply:
        kid, key = self._keys.signing_key()
        original = token.claims
        exp = int(min(now + EXCHANGED_TTL, token.expires_at))
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": peer_audience(target),
            "sub": original.get("sub", token.user_id),
            "iat": original["iat"],
            "exp": exp,
            "jti": _jti(),
            "idp_iss": original.get("iss", ""),
        }
        user_claim = self._validator_claim()
        claims[user_claim] = original.get(user_claim, token.user_id)
        for name in ("email", "email_verified", "name", "preferred_username", "auth_time"):
            if name in original:
                claims[name] = original[name]
        signed = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})
        return TokenExchangeReply(access_token=signed, expires_in=max(0, int(exp - now)))

    def _validator_claim(self) -> str:
        return self._cached[2].config.user_id_claim if self._cached is not None else "sub"
