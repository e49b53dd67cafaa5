"""Settings of meshssh-agent: flags and ``MESHSSH_AGENT_*`` env variables (SPEC §3, §11).

The local flags of SPEC §3 keep the names ``meshssh up`` gives them (``--allow-server-ssh``,
``--enable-ssh-sftp``...), so ``up`` hands them to the agent unchanged; :attr:`flags` is the
same set as the management plane sees it (:class:`~meshssh_common.wire.PeerFlags`). Flags can
change while the agent runs (``meshssh up`` on a running agent): :meth:`with_flags`.

Everything a peer keeps lives in ``--state-dir`` (several agents on one machine use different
dirs; see :mod:`meshssh_agent.state_dir`). Children's listen addresses derive from
``--mesh-ip``, so agents never collide. The setup key is not a setting: it comes from
``MESHSSH_SETUP_KEY`` or ``--setup-key-file`` (see :mod:`meshssh_agent.__main__`), never argv.

Example::

    settings = parse_settings(AgentSettings, ["--mesh-ip", "100.64.0.7"], prog="meshssh-agent")
    settings.flags           # PeerFlags(server_ssh_allowed=False, ...)
    settings.address(22)     # "100.64.0.7:22"
"""

from __future__ import annotations

import ipaddress
import platform
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from meshssh_agent.state_dir import StateDir, default_name, default_state_dir
from meshssh_common.permit_open import PermitOpen, PermitOpenError
from meshssh_common.settings import HostPort, ServiceSettings
from meshssh_common.version import VERSION
from meshssh_common.wire import PeerFlags, PeerMeta

__all__ = ["AgentSettings", "RelayModeChoice"]

RelayModeChoice = Literal["auto", "proxy", "nftables"]

# PeerFlags field -> the setting (and `meshssh up` flag) that carries it.
_FLAG_FIELDS = {
    "server_ssh_allowed": "allow_server_ssh",
    "local_port_forwarding": "enable_ssh_local_port_forwarding",
    "remote_port_forwarding": "enable_ssh_remote_port_forwarding",
    "sftp": "enable_ssh_sftp",
    "root_login": "enable_ssh_root",
    "disable_ssh_auth": "disable_ssh_auth",
    "jwt_cache_ttl": "ssh_jwt_cache_ttl",
    "agent_forwarding": "enable_ssh_agent_forwarding",
    "permit_open": "ssh_permit_open",
    "accept_idp_tokens": "accept_idp_tokens",
}


def _ip(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError names the problem
    return value


def _absolute(value: Path) -> Path:
    return value.absolute()


class AgentSettings(ServiceSettings):
    """Everything meshssh-agent can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_AGENT_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:0", description="HOST:PORT of /healthz, /readyz and /metrics (port 0: pick)"
    )
    state_dir: Annotated[Path, AfterValidator(_absolute)] = Field(
        default_factory=default_state_dir,
        description="host key, peer credential, NATS identity, agent socket (default: "
        "/var/lib/meshssh as root, else $XDG_STATE_HOME/meshssh)",
    )
    mesh_ip: Annotated[str, AfterValidator(_ip)] = Field(
        ..., description="this peer's mesh address"
    )
    name: str = Field(
        default_factory=default_name,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="peer name, a DNS label (default: the host name)",
    )
    management_url: str = Field(
        "", validation_alias="MESHSSH_MANAGEMENT_URL", description="the management REST API"
    )
    setup_key_file: Path | None = Field(
        None, description="file holding the one-time setup key (else env MESHSSH_SETUP_KEY)"
    )
    allow_server_ssh: bool = Field(False, description="allow this peer to run the SSH server")
    enable_ssh_local_port_forwarding: bool = Field(
        False, description="accept direct-tcpip channels (-L, -D)"
    )
    enable_ssh_remote_port_forwarding: bool = Field(
        False, description="accept tcpip-forward requests (-R)"
    )
    enable_ssh_sftp: bool = Field(False, description="serve the sftp subsystem")
    enable_ssh_root: bool = Field(False, description="allow login as root")
    disable_ssh_auth: bool = Field(False, description="no JWT: machine identity, network ACL only")
    enable_ssh_agent_forwarding: bool = Field(False, description="accept ssh -A")
    accept_idp_tokens: bool = Field(
        False, description="sshd also accepts IdP tokens sent directly (not only per-peer)"
    )
    ssh_jwt_cache_ttl: int = Field(0, ge=0, description="cache each local user's JWT (seconds)")
    ssh_permit_open: tuple[str, ...] = Field(
        ("any",),
        description="repeatable; OpenSSH PermitOpen syntax (HOST:PORT, [V6]:PORT, *:PORT, "
        "HOST:*, any, none): where -L and -D may connect",
    )
    ssh_port: int = Field(22022, ge=0, le=65535, description="meshssh-sshd's port (0: pick)")
    relay_port: int = Field(22, ge=0, le=65535, description="the port clients dial (0: pick)")
    relay_mode: RelayModeChoice = Field("auto", description="auto: nftables where it can run")
    native_upstream: HostPort | None = Field(
        None, description="a native SSH daemon for port-22 connections while SSH is off"
    )
    sshd_ops_listen: HostPort = Field("127.0.0.1:0", description="meshssh-sshd's ops address")
    relay_ops_listen: HostPort = Field("127.0.0.1:0", description="meshssh-relay's ops address")
    ssh_config_file: Annotated[Path, AfterValidator(_absolute)] | None = Field(
        None, description="the OpenSSH drop-in this agent keeps current (default: SPEC §9's)"
    )
    disable_ssh_config: bool = Field(False, description="keep no OpenSSH drop-in")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between heartbeats")
    child_stop_timeout: float = Field(
        1.0, gt=0, description="SIGTERM to SIGKILL for a child (a disabled peer stops in 2 s)"
    )
    sshd_bin: str = Field("", description="the meshssh-sshd executable (default: beside this)")
    relay_bin: str = Field("", description="the meshssh-relay executable (default: beside this)")

    @field_validator("ssh_permit_open")
    @classmethod
    def _permit_open_parses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return PermitOpen.parse(value).specs
        except PermitOpenError as e:
            raise ValueError(str(e).removeprefix("--ssh-permit-open: ")) from e

    @field_validator("relay_port")
    @classmethod
    def _distinct_ports(cls, port: int, info: ValidationInfo) -> int:
        if port != 0 and port == info.data.get("ssh_port"):
            raise ValueError("must differ from --ssh-port")
        return port

    @property
    def flags(self) -> PeerFlags:
        """The local flags of SPEC §3, as reported to the management plane."""
        return PeerFlags(**{wire: getattr(self, field) for wire, field in _FLAG_FIELDS.items()})

    def with_flags(self, flags: PeerFlags) -> AgentSettings:
        """The same settings with other local flags."""
        return self.model_copy(
            update={field: getattr(flags, wire) for wire, field in _FLAG_FIELDS.items()}
        )

    @property
    def files(self) -> StateDir:
        """The agent's files in its state dir."""
        return StateDir(self.state_dir)

    def address(self, port: int) -> str:
        """``HOST:PORT`` on the mesh address (IPv6 bracketed)."""
        host = f"[{self.mesh_ip}]" if ":" in self.mesh_ip else self.mesh_ip
        return f"{host}:{port}"

    def meta(self) -> PeerMeta:
        """What the peer reports about itself; meshssh's agent always supports native SSH.

        The ports are as resolved (the agent picks port 0 once): other peers' maps carry them.
        """
        return PeerMeta(
            version=VERSION,
            capabilities=("native_ssh",),
            flags=self.flags,
            hostname=socket.gethostname()[:255],
            os=platform.system().lower(),
            ssh_port=self.ssh_port,
            relay_port=self.relay_port,
        )
