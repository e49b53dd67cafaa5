"""Settings of meshssh-policy (flags and ``MESHSSH_POLICY_*`` env variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshssh_common.settings import HostPort, ServiceSettings

__all__ = ["PolicySettings"]


class PolicySettings(ServiceSettings):
    """Everything meshssh-policy can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_POLICY_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9101", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
