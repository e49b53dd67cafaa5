"""Settings of meshssh-relay (flags and ``MESHSSH_RELAY_*`` env variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    pins: Path | None = Field(
        None,
        description="the pins file (pins.json: the map and JWKS signing keys) the agent writes "
        "from its registration; unset or missing: no map or JWKS from the bus applies "
        "(fail closed)",
    )
    peer_id: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="this peer's id (whose map to watch)"
    )
    listen: HostPort = Field(
        ..., description="the mesh address and port SSH clients dial (MESH-IP:22; port 0 in tests)"
    )
    sshd: HostPort | None = Field(
        None,
        description="meshssh-sshd's address (MESH-IP:22022), where the nftables mode redirects; "
        "unset when the peer may not run it",
    )
    sshd_socket: Path | None = Field(
        None,
        description="meshssh-sshd's relay socket (its --relay-socket): the proxy mode hands "
        "connections there with a PROXY v2 header; unset when the peer may not run sshd",
    )
    native_upstream: HostPort | None = Field(
        None,
        description="a native SSH daemon for when SSH is off for this peer (e.g. 127.0.0.1:22)",
    )
    mode: Literal["proxy", "nftables"] = Field(
        "proxy",
        description="proxy: relay in userspace to --sshd-socket; nftables: kernel redirect to "
        "--sshd",
    )
    mesh_interface: str = Field(
        "", max_length=15, description="the mesh network interface (required in nftables mode)"
    )
    acl_port: int = Field(
        22,
        ge=1,
        le=65535,
        description="the port the network ACL is checked for (what clients dial)",
    )
    upstream_connect_timeout: float = Field(
        5.0, gt=0, description="seconds to keep retrying a refused upstream (sshd restarting)"
    )
    max_connections: int = Field(512, ge=1, description="concurrent relayed connections")
    nft_table: str = Field(
        "",
        pattern=r"^([A-Za-z][A-Za-z0-9_-]{0,63})?$",
        description="nftables table of this relay (default: meshssh-relay-<peer-id>)",
    )
    cleanup: bool = Field(
        False, description="remove this relay's nftables rule (after a crash) and exit"
    )

    @property
    def table(self) -> str:
        """The nftables table this relay owns."""
        return self.nft_table or f"meshssh-relay-{self.peer_id}"
