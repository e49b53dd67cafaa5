"""Settings of meshssh-policy (flags and ``MESHSSH_POLICY_*`` env variables, SPEC §11).

``--admin-token`` / ``MESHSSH_ADMIN_TOKEN`` has no default: when it is unset the service
generates a random token at start and logs it once (a warning). That keeps ``meshssh-policy``
usable on a laptop; production sets the variable (every replica must share one token).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from meshssh_common.recording_stream import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES
from meshssh_common.settings import HostPort, ServiceSettings

__all__ = ["MAX_PEER_CREDS_TTL", "PEER_CREDS_TTL", "PolicySettings"]

PEER_CREDS_TTL = 12 * 3600.0
MAX_PEER_CREDS_TTL = 24 * 3600.0


def _check_prefix(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as e:
        raise ValueError(f"not a network prefix like 100.64.0.0/10: {e}") from e


MeshPrefix = Annotated[str, AfterValidator(_check_prefix)]


class PolicySettings(ServiceSettings):
    """Everything meshssh-policy can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_POLICY_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9101", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
    listen: HostPort = Field(
        "127.0.0.1:8080", description="HOST:PORT of the REST API (/api/v1) and the dashboard (/)"
    )
    admin_token: str | None = Field(
        None,
        min_length=16,
        validation_alias="MESHSSH_ADMIN_TOKEN",
        description="bearer token for the REST API; when unset (and no --admin-token-file), "
        "one is generated and written to a new 0600 file whose path is logged",
    )
    admin_token_file: Path | None = Field(
        None,
        description="file holding the admin token (read when it exists; a generated token is "
        "written there, mode 0600, when it does not)",
    )
    mesh_prefix: MeshPrefix = Field(
        "100.64.0.0/10", description="the mesh prefix every peer address must be inside"
    )
    seed: Path | None = Field(
        None,
        description="JSON file of setup keys, users, groups and policies to create if absent",
    )
    peer_offline_timeout: float = Field(
        20.0, gt=0, description="seconds without a heartbeat before a peer counts as offline"
    )
    publish_concurrency: int = Field(
        64, ge=1, le=1024, description="network maps written to KV at the same time"
    )
    replica_lease: float = Field(
        3.0,
        gt=1.0,
        le=60.0,
        description="seconds without a heartbeat before the other policy replicas take over "
        "a replica's maps (heartbeats every lease/3)",
    )
    public_url: str = Field(
        "",
        description="URL browsers reach the dashboard at (its OIDC redirect is <this>/auth/"
        "callback); empty: http://<the bound --listen address>",
    )
    oidc_issuer: str = Field(
        "",
        description="issuer the dashboard signs users in with (authorization code + PKCE); "
        "empty: the issuer meshssh-authn publishes",
    )
    dashboard_client_id: str = Field(
        "meshssh-dashboard", description="OIDC client id of the dashboard at the issuer"
    )
    admin_group: str = Field(
        "",
        description="users in this group (a meshssh group id, or a value of the token's "
        "groups claim) are dashboard admins",
    )
    admin_users: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="user ids that are dashboard admins (repeatable; env: comma-separated); "
        "everyone else who signs in gets read-only pages",
    )
    gateway_url: str = Field(
        "",
        description="URL browsers reach meshssh-gateway at (http(s) or ws(s)); the dashboard "
        "opens its terminals there; empty: no Connect button, no browser terminals",
    )
    session_ttl: float = Field(8 * 3600.0, gt=0, description="seconds a dashboard sign-in lasts")
    bus_keys: Path | None = Field(
        None,
        validation_alias="MESHSSH_BUS_KEYS",
        description="the bus directory of `meshssh-policy init` (or a Secret mount holding "
        "account-signing.nk, operator-signing.nk, meta.json, system.creds, map-signing.pem "
        "and jwks-signing.pub); required: policy signs every network map with it",
    )
    peer_creds_ttl: float = Field(
        PEER_CREDS_TTL,
        ge=60,
        le=MAX_PEER_CREDS_TTL,
        description="seconds a peer's NATS credential lasts (the agent renews at half-life)",
    )

    recordings_max_bytes: int = Field(
        DEFAULT_MAX_BYTES,
        ge=2**20,
        description="bytes the session recordings stream keeps (the oldest go first)",
    )
    recordings_max_age: float = Field(
        DEFAULT_MAX_AGE, ge=60, description="seconds a session recording is kept"
    )

    @field_validator("public_url", "oidc_issuer")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"{value!r} is not an http(s) or ws(s) URL")
        if "?" in value or "#" in value:
            raise ValueError(f"{value!r}: give the gateway's base URL, without a query")
        return value.rstrip("/")

    @field_validator("admin_users", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value
