"""The embedded OIDC provider's logic, shared by its HTTP endpoints and the NATS device broker.

It is a public-client OP for one client id that knows one grant, the device code (RFC 8628):
start a grant, let a user approve it on the login page with a name and password from the
users file, and hand out signed tokens to the poller. All shared state (grants, keys) is in
KV, so any replica answers any step.

Endpoints, relative to the issuer URL: ``/.well-known/openid-configuration``,
``/.well-known/jwks.json``, ``/oauth2/device_authorization``, ``/oauth2/token``, ``/device``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from meshssh_authn.auth_codes import AuthCodes, CodeGrant
from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.code_attempts import CodeAttempts
from meshssh_authn.device_grants import (
    DeviceContext,
    DeviceGrant,
    DeviceGrants,
    PollStatus,
    StartedGrant,
)
from meshssh_authn.key_ring import KeyRing
from meshssh_authn.login_throttle import LoginThrottle
from meshssh_authn.token_issuer import IssuedTokens, TokenIssuer
from meshssh_authn.users import User, UsersFile
from meshssh_common.errors import BadRequest, Conflict, Denied, NotFound, RateLimited
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import JwtConfig, OidcClientConfig

__all__ = ["EmbeddedProvider", "LoginResult", "ProviderConfig"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_SUPPORTED_SCOPES = ("openid", "email", "profile", "groups")


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """What the embedded provider is told (from settings)."""

    issuer: str
    client_id: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    use_id_token: bool
    user_id_claim: str
    max_token_age: int
    clock_skew: int
    signing_alg: str
    jwks_max_age: int
    require_email_verified: bool = True


LoginResult = Literal["approved", "denied"]


class EmbeddedProvider:
    """Device authorization, login and token issue for the embedded OP."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        ring: KeyRing,
        grants: DeviceGrants,
        tokens: TokenIssuer,
        users: UsersFile | None,
        metrics: AuthnMetrics,
        log: BoundLogger,
        throttle: LoginThrottle | None = None,
        auth_codes: AuthCodes | None = None,
        code_attempts: CodeAttempts | None = None,
    ) -> None:
        self.config = config
        self.ring = ring
        self._grants = grants
        self._tokens = tokens
        self._users = users
        self._metrics = metrics
        self._log = log
        self._throttle = throttle or LoginThrottle()
        self.auth_codes = auth_codes
        self._codes = code_attempts or CodeAttempts()

    def url(self, path: str) -> str:
        """An absolute URL under the issuer."""
        return self.config.issuer + path

    def metadata(self) -> dict[str, Any]:
        """The OIDC discovery document (the authorization endpoint when a browser client is set)."""
        c = self.config
        doc = {
            "issuer": c.issuer,
            "jwks_uri": self.url("/.well-known/jwks.json"),
            "device_authorization_endpoint": self.url("/oauth2/device_authorization"),
            "token_endpoint": self.url("/oauth2/token"),
            "grant_types_supported": [DEVICE_GRANT],
            "response_types_supported": [],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [c.signing_alg],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": list(_SUPPORTED_SCOPES),
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "nbf",
                "auth_time",
                "azp",
                "email",
                "name",
                "preferred_username",
                "groups",
            ],
        }
        if self.auth_codes is not None and self.auth_codes.enabled:
            doc["authorization_endpoint"] = self.url("/oauth2/authorize")
            doc["grant_types_supported"] = [DEVICE_GRANT, "authorization_code"]
            doc["response_types_supported"] = ["code"]
            doc["code_challenge_methods_supported"] = ["S256"]
        return doc

    def client_config(self) -> OidcClientConfig:
        """What ``meshssh login`` needs to run the device flow against this provider."""
        c = self.config
        return OidcClientConfig(
            issuer=c.issuer,
            client_id=c.client_id,
            device_authorization_endpoint=self.url("/oauth2/device_authorization"),
            token_endpoint=self.url("/oauth2/token"),
            scopes=c.scopes,
            use_id_token=c.use_id_token,
            max_token_age=c.max_token_age,
            clock_skew=c.clock_skew,
        )

    def jwt_config(self) -> JwtConfig:
        """How SSH servers validate this provider's tokens."""
        c = self.config
        return JwtConfig(
            issuer=c.issuer,
            audiences=(c.client_id,) if c.use_id_token else c.audiences,
            keys_location=self.url("/.well-known/jwks.json"),
            user_id_claim=c.user_id_claim,
            max_token_age=c.max_token_age,
            clock_skew=c.clock_skew,
            require_email_verified=c.require_email_verified,
        )

    def _check_client(self, client_id: str) -> None:
        if client_id != self.config.client_id:
            raise BadRequest("invalid_client")

    def _scope(self, requested: str) -> str:
        wanted = requested.split() or list(self.config.scopes)
        granted = [s for s in dict.fromkeys(wanted) if s in _SUPPORTED_SCOPES]
        return " ".join(granted or ["openid"])

    async def authorize_device(
        self, client_id: str, scope: str, context: DeviceContext | None = None
    ) -> StartedGrant:
        """Start a device grant (the device authorization endpoint).

        Raises:
            BadRequest: ``invalid_client``.
        """
        self._check_client(client_id)
        started = await self._grants.start(client_id, self._scope(scope), context)
        self._metrics.device_flows.labels(outcome="started").inc()
        return started

    async def poll_token(
        self, device_code: str, client_id: str
    ) -> tuple[PollStatus, IssuedTokens | None]:
        """One poll of the token endpoint; tokens only with status ``ok``.

        Raises:
            BadRequest: ``invalid_client`` (unknown client, or the code is another client's).
        """
        self._check_client(client_id)
        try:
            status, grant = await self._grants.poll(device_code, client_id)
        except BadRequest as e:
            raise BadRequest("invalid_client") from e
        if status == "expired":
            self._metrics.device_flows.labels(outcome="expired").inc()
        if status != "ok" or grant is None:
            return status, None
        user = self._users.get(grant.username) if self._users is not None else None
        if user is None:  # removed from the users file since approving
            self._log.warning("approved user vanished", extra={"user": grant.username})
            self._metrics.device_flows.labels(outcome="denied").inc()
            return "denied", None
        issued = await self._tokens.issue(grant.username, user, grant.scope)
        self._metrics.tokens_issued.inc()
        self._metrics.device_flows.labels(outcome="completed").inc()
        self._log.info("token issued", extra={"user": grant.username, "client": client_id})
        return "ok", issued

    async def check_password(self, username: str, password: str, address: str) -> User:
        """A user's name and password, behind the same throttle as the device login page.

        Raises:
            RateLimited: too many recent failures for this name or address.
            Denied: wrong user name or password.
        """
        if self._throttle.blocked(username, address):
            self._metrics.login_failures.labels(reason="throttled").inc()
            raise RateLimited("too many failed sign-ins; wait a few minutes")
        users = self._users
        user = await asyncio.to_thread(users.authenticate, username, password) if users else None
        if user is None:
            self._throttle.failed(username, address)
            self._metrics.login_failures.labels(reason="bad_credentials").inc()
            self._log.info("login refused", extra={"user": username, "address": address})
            raise Denied(f"bad credentials for {username!r}", public="wrong user name or password")
        self._throttle.succeeded(username)
        return user

    async def code_tokens(self, grant: CodeGrant) -> IssuedTokens | None:
        """Tokens for a redeemed authorization code (None: the user was removed since)."""
        user = self._users.get(grant.username) if self._users is not None else None
        if user is None:
            return None
        issued = await self._tokens.issue(
            grant.username,
            user,
            self._scope(grant.scope),
            client_id=grant.client_id,
            nonce=grant.nonce,
        )
        self._metrics.tokens_issued.inc()
        self._log.info("token issued", extra={"user": grant.username, "client": grant.client_id})
        return issued

    async def lookup_code(self, user_code: str, address: str) -> DeviceGrant:
        """The pending, unexpired grant ``user_code`` names, looked up from ``address``.

        Unknown codes count against ``address`` and against everyone (:class:`CodeAttempts`).

        Raises:
            RateLimited: too many unknown codes lately, from ``address`` or overall.
            NotFound: no pending, unexpired grant has that code.
        """
        if self._codes.blocked(address):
            self._metrics.login_failures.labels(reason="code_throttled").inc()
            raise RateLimited("too many unknown codes were tried; wait a few minutes")
        try:
            return await self._grants.pending(user_code)
        except NotFound:
            self._codes.missed(address)
            self._metrics.login_failures.labels(reason="unknown_code").inc()
            self._log.info("unknown device code tried", extra={"address": address})
            raise

    async def login(
        self, *, user_code: str, username: str, password: str, address: str, approve: bool
    ) -> LoginResult:
        """The login form: check the code and the credentials, then approve or deny.

        Raises:
            NotFound: the code is unknown, expired or used.
            RateLimited: too many recent failures for this name or address, or too many
                unknown codes.
            Denied: wrong user name or password (``public`` says so, without which).
        """
        if self._throttle.blocked(username, address):
            self._metrics.login_failures.labels(reason="throttled").inc()
            raise RateLimited("too many failed sign-ins; wait a few minutes")
        await self.lookup_code(user_code, address)
        # scrypt takes tens of milliseconds: keep it off the event loop.
        users = self._users
        user = await asyncio.to_thread(users.authenticate, username, password) if users else None
        if user is None:
            self._throttle.failed(username, address)
            self._metrics.login_failures.labels(reason="bad_credentials").inc()
            self._log.info("login refused", extra={"user": username, "address": address})
            raise Denied(f"bad credentials for {username!r}", public="wrong user name or password")
        self._throttle.succeeded(username)
        try:
            await self._grants.decide(user_code, username, approve=approve)
        except Conflict as e:
            raise NotFound("the code was used concurrently") from e
        outcome: LoginResult = "approved" if approve else "denied"
        self._metrics.device_flows.labels(outcome=outcome).inc()
        self._log.info("device grant decided", extra={"user": username, "outcome": outcome})
        return outcome
