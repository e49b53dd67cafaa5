"""Settings of meshssh-sshd (flags and ``MESHSSH_SSHD_*`` env variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshssh_common.settings import HostPort, ServiceSettings

__all__ = ["SshdSettings"]


class SshdSettings(ServiceSettings):
    """Everything meshssh-sshd can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_SSHD_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9103", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
