"""Where the mirrored keys come from: an external provider over HTTP, or the embedded key ring.

Both answer :meth:`fetch` with the same :class:`Fetched` record (keys, cache lifetime, the
validation config and the client config), so the JWKS mirror has one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from meshssh_authn.embedded_provider import EmbeddedProvider
from meshssh_authn.provider_http import FetchError, ProviderMetadata, discover, fetch_jwks
from meshssh_common.wire import JwtConfig, OidcClientConfig

__all__ = ["EmbeddedSource", "ExternalConfig", "ExternalSource", "Fetched", "KeySource"]


@dataclass(frozen=True, slots=True)
class Fetched:
    """One successful read of the provider."""

    keys: tuple[dict[str, Any], ...]
    max_age: float | None  # None: the provider gave no cache lifetime
    jwt: JwtConfig
    client: OidcClientConfig | None
    source: str


class KeySource(Protocol):
    """Something the mirror can read keys from."""

    @property
    def issuer(self) -> str:
        """The issuer the keys belong to (as configured)."""
        ...

    async def fetch(self) -> Fetched:
        """Read the keys now.

        Raises:
            FetchError: the provider could not be read; nothing is returned.
        """
        ...


@dataclass(frozen=True, slots=True)
class ExternalConfig:
    """How to reach and trust an external provider (from settings)."""

    issuer: str
    jwks_url: str
    client_id: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    use_id_token: bool
    user_id_claim: str
    require_email_verified: bool
    max_token_age: int
    clock_skew: int


class ExternalSource:
    """Discovery, then the JWKS, from a provider nobody here wrote."""

    def __init__(self, config: ExternalConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http

    @property
    def issuer(self) -> str:
        """The configured issuer URL."""
        return self.config.issuer

    async def fetch(self) -> Fetched:
        """Discover the provider and fetch its keys (``--jwks-url`` wins over discovery).

        Raises:
            FetchError: discovery (without ``--jwks-url``) or the JWKS fetch failed.
        """
        c = self.config
        meta: ProviderMetadata | None
        try:
            meta = await discover(self._http, c.issuer)
        except FetchError:
            if not c.jwks_url:
                raise
            meta = None  # the keys are still reachable; only the client config is missing
        jwks = await fetch_jwks(self._http, c.jwks_url or (meta.jwks_uri if meta else ""))
        jwt = JwtConfig(
            issuer=meta.issuer if meta else c.issuer,
            audiences=c.audiences,
            keys_location=jwks.url,
            user_id_claim=c.user_id_claim,
            require_email_verified=c.require_email_verified,
            max_token_age=c.max_token_age,
            clock_skew=c.clock_skew,
        )
        client = None
        if meta and meta.device_authorization_endpoint and meta.token_endpoint:
            client = OidcClientConfig(
                issuer=meta.issuer,
                client_id=c.client_id,
                device_authorization_endpoint=meta.device_authorization_endpoint,
                token_endpoint=meta.token_endpoint,
                scopes=c.scopes,
                use_id_token=c.use_id_token,
                max_token_age=c.max_token_age,
                clock_skew=c.clock_skew,
            )
        return Fetched(jwks.keys, jwks.max_age, jwt, client, jwks.url)


class EmbeddedSource:
    """The embedded provider's own key ring (read from KV, no HTTP)."""

    def __init__(self, provider: EmbeddedProvider) -> None:
        self._provider = provider

    @property
    def issuer(self) -> str:
        """The embedded provider's issuer URL."""
        return self._provider.config.issuer

    async def fetch(self) -> Fetched:
        """The ring's published keys, after any rotation that is due."""
        ring = self._provider.ring
        await ring.ensure()
        return Fetched(
            keys=ring.public_jwks(),
            max_age=min(ring.seconds_to_next_event(), 300.0),
            jwt=self._provider.jwt_config(),
            client=self._provider.client_config(),
            source=self._provider.url("/.well-known/jwks.json"),
        )
