"""Settings of meshssh-authn (flags and ``MESHSSH_AUTHN_*`` env variables).

With no ``--issuer`` the embedded OIDC provider runs on ``--listen`` and signs tokens with its
own rotating key set; with ``--issuer`` the embedded provider is off and authn mirrors that
provider's keys instead (SPEC §6, §11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from meshssh_common.settings import HostPort, ServiceSettings

__all__ = ["AuthnSettings", "SigningAlg"]

SigningAlg = Literal["RS256", "ES256", "EdDSA"]


class AuthnSettings(ServiceSettings):
    """Everything meshssh-authn can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_AUTHN_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9102", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
    listen: HostPort = Field(
        "127.0.0.1:8081", description="HOST:PORT of the embedded OIDC provider (HTTP)"
    )
    public_url: str = Field(
        "",
        description="URL users and clients reach the embedded provider at, and the token "
        "issuer; empty: http://<the bound --listen address>",
    )
    users_file: Path | None = Field(
        None, description="users of the embedded provider (manage with `meshssh-authn users`)"
    )
    issuer: str = Field(
        "", description="issuer URL of an external OIDC provider; turns the embedded one off"
    )
    jwks_url: str = Field(
        "", description="JWKS URL of the external provider; empty: from OIDC discovery"
    )
    audience: Annotated[tuple[str, ...], NoDecode] = Field(
        ("meshssh",),
        description="accepted token audience; a token needs one of them (env: comma-separated; "
        "with --use-id-token, ID tokens carry the client id)",
    )
    user_id_claim: str = Field("sub", description="claim that names the user")
    require_email_verified: bool = Field(
        True,
        description="with --user-id-claim email, refuse tokens whose email_verified is not true",
    )
    max_token_age: int = Field(600, ge=1, description="seconds a token is accepted after its iat")
    clock_skew: int = Field(60, ge=0, description="seconds of leeway on every time check")
    client_id: str = Field("meshssh", description="OIDC client id of `meshssh login` and sshd")
    dashboard_client_id: str = Field(
        "meshssh-dashboard",
        description="OIDC client id of the policy dashboard (authorization code with PKCE)",
    )
    dashboard_redirect_uri: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="the dashboard's redirect URI, <policy URL>/auth/callback (repeatable; env: "
        "comma-separated); none: the embedded provider has no authorization endpoint",
    )
    scope: Annotated[tuple[str, ...], NoDecode] = Field(
        ("openid", "email", "profile"),
        description="scopes the device flow asks for (env: comma-separated)",
    )
    use_id_token: bool = Field(
        False, description="present the ID token instead of the access token over SSH"
    )
    token_ttl: int = Field(600, ge=10, description="lifetime of tokens the embedded provider signs")
    signing_alg: SigningAlg = Field("RS256", description="algorithm of the embedded signing keys")
    key_rotation: float = Field(
        86400.0, gt=0, description="seconds one embedded signing key signs before the next"
    )
    key_publish_lead: float = Field(
        3600.0, ge=0, description="seconds a new signing key is published before it signs"
    )
    device_code_ttl: int = Field(600, ge=30, description="seconds a device code stays valid")
    device_poll_interval: int = Field(5, ge=0, description="seconds between device-flow polls")
    device_code_misses_per_source: int = Field(
        10, ge=1, description="unknown user codes one address may try per 5 minutes"
    )
    device_code_misses: int = Field(
        200, ge=1, description="unknown user codes all addresses together may try per 5 minutes"
    )
    jwks_refresh_interval: float = Field(
        300.0,
        gt=0,
        description="seconds between JWKS fetches when the provider sends no max-age (the "
        "provider's max-age is never followed below min(30, this))",
    )
    jwks_refresh_min_interval: float = Field(
        1.0,
        ge=0,
        description="at most one forced JWKS fetch (unknown kid) per this many seconds, across "
        "all replicas; a request waits for the next one",
    )
    jwks_refresh_kid_interval: float = Field(
        30.0,
        ge=0,
        description="seconds a kid that a forced fetch did not find is refused without "
        "fetching again (other kids are not held up)",
    )
    jwks_retry_interval: float = Field(
        10.0, gt=0, description="seconds before a failed JWKS fetch is retried"
    )
    jwks_signing_key: Path | None = Field(
        None,
        description="Ed25519 key (PKCS#8 PEM) that signs the JWKS document in KV (required; "
        "meshssh-policy init writes <bus keys>/jwks-signing.pem; PATH.previous endorses it "
        "after a rotation)",
    )
    exchange_issuer: str = Field(
        "urn:meshssh:authn", min_length=1, description="iss of the per-peer tokens authn signs"
    )
    exchange_rate: float = Field(
        50.0, gt=0, description="token exchanges one requesting peer may make per second"
    )
    exchange_burst: int = Field(
        100, ge=1, description="token exchanges one requesting peer may make in a burst"
    )
    provider_timeout: float = Field(
        5.0, gt=0, description="seconds to wait for the external provider's HTTP answers"
    )

    @field_validator("audience", "scope", "dashboard_redirect_uri", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # Env variables hold a comma-separated list ("meshssh,meshssh-cli"); flags repeat.
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> AuthnSettings:
        if self.jwks_signing_key is None:
            raise ValueError("--jwks-signing-key: required")
        if not self.audience:
            raise ValueError("--audience needs at least one value")
        if not self.issuer and self.key_publish_lead >= self.key_rotation:
            raise ValueError("--key-publish-lead must be shorter than --key-rotation")
        for url in (self.issuer, self.public_url, self.jwks_url, *self.dashboard_redirect_uri):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return self

    @property
    def embedded(self) -> bool:
        """True when the embedded OIDC provider runs (no external ``--issuer``)."""
        return not self.issuer
