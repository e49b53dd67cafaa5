"""JWT authentication and authorization of one login (SPEC §6).

A token (sent as the SSH password, pasted into the browser check, or obtained by it) is one
of two kinds, told apart by its header ``kid`` alone:

- a **per-peer token** (``kid`` is one of authn's exchange keys in ``meshssh-jwks``): validated
  only by :class:`~meshssh_common.peer_tokens.PeerTokenValidator` (authn's issuer, ``aud``
  exactly this peer's, the map's max age on the original ``iat``) and then its ``jti`` must be
  new to the :class:`~meshssh_sshd.replay_cache.ReplayCache` (``replayed``; a full cache
  refuses: ``replay_cache_full``);
- any other token is the **IdP's own**: refused (``idp_token_refused``) unless the peer runs
  with ``--accept-idp-tokens``, and then validated with the common :class:`JwtValidator`:
  config from this peer's map (``netmap.peer.jwt``), the IdP keys from ``meshssh-jwks`` (never
  an exchange key). An unknown ``kid`` triggers one refresh through authn and one retry.

The user id is the claim the map's authorization table names (``ssh_auth.user_id_claim``),
and the login is allowed only if the table grants that user the requested local user
(directly or through ``*``). Anything missing fails closed: no map, no JWT config in it, no
keys.

Example::

    auth = Authenticator(maps, keys, metrics, log, peer_id="p1", replays=ReplayCache(4096))
    identity = await auth.check_token(password, local_user="alice")   # raises Denied
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt

from meshssh_common.jwt_validation import (
    MAX_TOKEN_BYTES,
    RejectReason,
    TokenRejected,
    ValidatedToken,
    check_user_claim,
)
from meshssh_common.logs import BoundLogger
from meshssh_common.peer_map import PeerMap
from meshssh_common.session_rules import NONE, login_age_refusal, rules_for
from meshssh_common.ssh_auth import authorize
from meshssh_common.wire import JwtConfig, NetworkMap, SessionRules
from meshssh_sshd.jwks_watch import JwksWatch
from meshssh_sshd.metrics import SshdMetrics
from meshssh_sshd.refusal import Refused
from meshssh_sshd.replay_cache import ReplayCache, Use

__all__ = ["Authenticator", "Identity"]

_TRY_AGAIN = "try again in a minute; if it persists, ask an admin to check the peer"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who authenticated: the user id from the token (empty in machine-identity mode)."""

    user_id: str
    method: str
    kid: str = ""
    expires_at: float = 0.0
    email: str = ""  # the token's claims, for the auth-accepted audit event
    name: str = ""
    rules: SessionRules = NONE  # the session rules of the ssh rules that let the user in


def _profile_claim(claims: Mapping[str, object], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) and len(value) <= 255 else ""


def _unverified_kid(token: str) -> str:
    """The header's ``kid`` ("" when absent); the token is not verified yet.

    Raises:
        TokenRejected: too large (``too_large``) or no decodable JWT header (``malformed``).
    """
    if len(token) >= MAX_TOKEN_BYTES:  # checked before any decoding
        raise TokenRejected(RejectReason.TOO_LARGE, f"token of {len(token)} characters")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except (jwt.DecodeError, ValueError, TypeError) as e:
        raise TokenRejected(RejectReason.MALFORMED, "no decodable JWT header") from e
    return kid if isinstance(kid, str) else ""


class Authenticator:
    """Checks tokens against this peer's map and the mirrored signing keys."""

    def __init__(
        self,
        maps: PeerMap,
        keys: JwksWatch,
        metrics: SshdMetrics,
        log: BoundLogger,
        *,
        peer_id: str,
        replays: ReplayCache,
        accept_idp_tokens: bool = False,
    ) -> None:
        self._maps = maps
        self._keys = keys
        self._metrics = metrics
        self._log = log
        self._peer_id = peer_id
        self._replays = replays
        self._accept_idp = accept_idp_tokens

    def _jwt_config(self) -> tuple[NetworkMap, JwtConfig]:
        netmap = self._maps.current
        if netmap is None:
            raise Refused(
                "no_map",
                "no network map yet",
                public=f"Permission denied: this peer has no access policy yet; {_TRY_AGAIN}",
            )
        config = netmap.peer.jwt
        if config is None:
            self._log.error(
                "the network map carries no JWT configuration: refusing every JWT login "
                "(management must copy authn's config into the map)",
                extra={"serial": netmap.serial},
            )
            raise Refused(
                "no_jwt_config",
                f"map serial {netmap.serial} has no JWT config",
                public="Permission denied: this peer has no identity-provider configuration; "
                "ask an admin to check the meshssh identity setup",
            )
        return netmap, config

    def _no_keys(self) -> Refused:
        return Refused(
            "no_keys",
            "no JWKS snapshot in meshssh-jwks",
            public=f"Permission denied: this peer has no signing keys yet; {_TRY_AGAIN}",
        )

    def _validate(self, config: JwtConfig, token: str) -> ValidatedToken:
        validator = self._keys.validator_for(config)
        if validator is None:
            raise self._no_keys()
        started = time.perf_counter()
        try:
            return validator.validate(token)
        finally:
            self._metrics.jwt_validation.observe(time.perf_counter() - started)

    def _validate_peer_token(self, config: JwtConfig, token: str) -> ValidatedToken:
        validator = self._keys.peer_validator_for(config, self._peer_id)
        if validator is None:
            raise self._no_keys()
        started = time.perf_counter()
        try:
            checked = validator.validate(token)
        finally:
            self._metrics.jwt_validation.observe(time.perf_counter() - started)
        # Only a token that passed every other check spends its jti: garbage cannot fill the
        # cache, and a forged token cannot burn someone else's jti.
        use = self._replays.use(checked.jti, checked.token.expires_at, skew=config.clock_skew)
        self._metrics.replay_cache_entries.set(len(self._replays))
        if use is Use.REPLAYED:
            raise TokenRejected(RejectReason.REPLAYED, f"jti {checked.jti[:40]!r} was used before")
        if use is Use.FULL:
            self._log.warning(
                "replay cache full: refusing per-peer tokens until entries expire "
                "(raise --replay-cache-size if this is legitimate load)",
                extra={"capacity": self._replays.capacity},
            )
            raise TokenRejected(
                RejectReason.REPLAY_CACHE_FULL,
                f"replay cache holds {self._replays.capacity} live tokens",
            )
        return checked.token

    async def validate(self, token: str) -> tuple[NetworkMap, ValidatedToken]:
        """Validate ``token`` alone (no authorization): a per-peer token or an IdP token.

        An IdP token gets one key refresh on an unknown kid; a per-peer token's jti is spent.

        Raises:
            Refused: no map, no JWT config, or no keys.
            TokenRejected: the token failed a check (``public`` says what to do).
        """
        netmap, config = self._jwt_config()
        kid = _unverified_kid(token)
        if kid and kid in self._keys.exchange_kids:
            return netmap, self._validate_peer_token(config, token)
        if not self._accept_idp:
            raise TokenRejected(
                RejectReason.IDP_TOKEN_REFUSED,
                f"kid {kid!r} is no exchange key: an IdP token, and --accept-idp-tokens is off",
            )
        try:
            return netmap, self._validate(config, token)
        except TokenRejected as e:
            if e.reason is not RejectReason.UNKNOWN_KID:
                raise
            if not kid or not await self._keys.refresh(kid):
                raise
        netmap, config = self._jwt_config()
        if kid in self._keys.exchange_kids:  # the refresh brought it as an exchange key
            return netmap, self._validate_peer_token(config, token)
        return netmap, self._validate(config, token)

    async def check_token(self, token: str, local_user: str, *, method: str) -> Identity:
        """Validate ``token`` and authorize its user for ``local_user``.

        Raises:
            Refused: no map/config/keys, no user id, or not authorized (``not_authorized``).
            TokenRejected: the token failed a check.
        """
        netmap, tok = await self.validate(token)
        config = netmap.peer.jwt
        fallback = config.user_id_claim if config is not None else "sub"
        claim = netmap.ssh_auth.user_id_claim or fallback
        user_id = tok.claims.get(claim)
        if config is not None and isinstance(user_id, str) and user_id:
            check_user_claim(tok.claims, claim, config)  # email: email_verified must be true
        if not isinstance(user_id, str) or not user_id:
            raise Refused(
                "missing_claim",
                f"user-id claim {claim!r} missing from the token",
                public=f"Permission denied: your token has no {claim} claim; "
                "ask an admin to check the user-id claim setting",
            )
        if not authorize(netmap.ssh_auth, user_id, local_user):
            raise Refused(
                "not_authorized",
                f"user {user_id!r} may not log in as {local_user!r} (map serial {netmap.serial})",
                public=f"Permission denied: you are not authorized to log in as {local_user} "
                "on this peer; ask an admin for a policy that grants it",
                user_id=user_id,
            )
        rules = _session_rules(netmap, tok.claims, user_id, local_user)
        email, name = _profile_claim(tok.claims, "email"), _profile_claim(tok.claims, "name")
        return Identity(user_id, method, tok.kid, tok.expires_at, email, name, rules)


def _session_rules(
    netmap: NetworkMap, claims: Mapping[str, object], user_id: str, local_user: str
) -> SessionRules:
    """The login's session rules; a login older than their check period is refused."""
    rules = rules_for(netmap.ssh_auth, user_id, local_user)
    why = login_age_refusal(rules, claims, now=time.time())
    if why:
        raise Refused(
            "check_period",
            f"user {user_id!r}: {why}",
            public=f"Permission denied: {why}; re-authenticate (meshssh login) and try again",
            user_id=user_id,
        )
    return rules
