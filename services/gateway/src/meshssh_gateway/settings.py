"""Settings of meshssh-gateway: flags and ``MESHSSH_GATEWAY_*`` env variables (issue 20).

The gateway is a mesh peer of its own: ``--mesh-ip``, ``--name``, ``--management-url`` and the
setup key (``MESHSSH_SETUP_KEY`` or ``--setup-key-file``, never argv) register it as the agent
registers; ``--state-dir`` keeps its peer credential, NATS key pair and creds, and the pins.
The browser side: ``--listen`` serves ``/v1/terminal`` (plain HTTP; TLS ends at the ingress),
``--allowed-origin`` lists the dashboard origins a WebSocket may come from (none: every
WebSocket is refused).

Example::

    settings = parse_settings(GatewaySettings, ["--mesh-ip", "100.64.0.9",
                              "--allowed-origin", "https://meshssh.example.com"],
                              prog="meshssh-gateway")
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import SettingsConfigDict

from meshssh_common.settings import HostPort, ServiceSettings

__all__ = ["GatewaySettings", "default_state_dir"]


def default_state_dir() -> Path:
    """``/var/lib/meshssh-gateway`` for root, else ``$XDG_STATE_HOME/meshssh-gateway``."""
    if os.geteuid() == 0:
        return Path("/var/lib/meshssh-gateway")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshssh-gateway"


def _ip(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError names the problem
    return value


def _absolute(value: Path) -> Path:
    return value.absolute()


def _origin(value: str) -> str:
    """``scheme://host[:port]``, lower-cased, as browsers send it in ``Origin``."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an origin (https://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{value!r} is not an origin: no path, query or user part")
    return f"{parts.scheme}://{parts.netloc}".lower()


class GatewaySettings(ServiceSettings):
    """Everything meshssh-gateway can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_GATEWAY_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9106", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
    listen: HostPort = Field(
        "127.0.0.1:8090",
        description="HOST:PORT of the browsers' WebSocket endpoint /v1/terminal (plain HTTP; "
        "put TLS in front, the dashboard opens wss://)",
    )
    allowed_origin: tuple[str, ...] = Field(
        (),
        description="repeatable; a dashboard origin (https://host[:port]) WebSockets may come "
        "from; any other Origin is refused with 403 before the upgrade (none: all refused)",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="comma-separated proxy addresses (or *) whose X-Forwarded-For names the "
        "browser's address (empty: trust none; the TCP peer is the browser)",
    )
    state_dir: Annotated[Path, AfterValidator(_absolute)] = Field(
        default_factory=default_state_dir,
        description="peer credential, NATS key pair and creds, pins (default: "
        "/var/lib/meshssh-gateway as root, else $XDG_STATE_HOME/meshssh-gateway)",
    )
    mesh_ip: Annotated[str, AfterValidator(_ip)] = Field(
        ..., description="the gateway's mesh address (its SSH connections leave from it)"
    )
    name: str = Field(
        "gateway",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="the gateway's peer name, a DNS label",
    )
    management_url: str = Field(
        "", validation_alias="MESHSSH_MANAGEMENT_URL", description="the management REST API"
    )
    setup_key_file: Path | None = Field(
        None, description="file holding the setup key (else env MESHSSH_SETUP_KEY)"
    )
    max_sessions_per_user: int = Field(5, ge=1, description="open terminals per user")
    max_sessions: int = Field(200, ge=1, description="open terminals on this gateway")
    idle_timeout: float = Field(
        900.0, gt=0, description="seconds without input or output before a terminal is closed"
    )
    connect_timeout: float = Field(
        15.0, gt=0, description="seconds for ticket, token exchange and SSH login together"
    )
    send_buffer: int = Field(
        256 * 1024,
        ge=4096,
        description="bytes queued towards a browser above which the gateway stops reading "
        "the SSH channel (back-pressure)",
    )

    @field_validator("allowed_origin")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_origin(v) for v in value))

    @property
    def credential_path(self) -> Path:
        """The peer id and credential management issued (0600)."""
        return self.state_dir / "peer.json"

    @property
    def nats_seed(self) -> Path:
        """The seed of the gateway's NATS user key (0600; it never leaves this file)."""
        return self.state_dir / "nats.nk"

    @property
    def nats_creds_file(self) -> Path:
        """The gateway's NATS creds file, rewritten at every renewal (0600)."""
        return self.state_dir / "nats.creds"
