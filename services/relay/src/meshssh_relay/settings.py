"""Settings of meshssh-relay (flags and ``MESHSSH_RELAY_*`` env variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshssh_common.settings import HostPort, ServiceSettings

__all__ = ["RelaySettings"]


class RelaySettings(ServiceSettings):
    """Everything meshssh-relay can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_RELAY_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9104", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
