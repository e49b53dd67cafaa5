"""What ``meshssh up`` was told: the agent's settings, its flags and the files in its state dir.

Everything a peer keeps lives in ``--state-dir`` (several agents on one machine use different
dirs): the SSH host key, the peer credential, the agent socket, its lock and, when daemonized,
its log. Children's listen addresses derive from ``--mesh-ip``, so agents never collide.

Example::

    config = AgentConfig(state_dir=Path("/var/lib/meshssh"), mesh_ip="100.64.0.7", ...)
    config.socket_path    # /var/lib/meshssh/agent.sock
    config.meta()         # PeerMeta(version=..., capabilities=("native_ssh",), flags=...)
"""

from __future__ import annotations

import ipaddress
import os
import platform
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from meshssh_common.errors import ConfigError
from meshssh_common.version import VERSION
from meshssh_common.wire import PeerFlags, PeerMeta

__all__ = ["AgentConfig", "Flags", "default_name", "default_state_dir"]

RelayModeChoice = Literal["auto", "proxy", "nftables"]
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def default_state_dir() -> Path:
    """``/var/lib/meshssh`` for root, else ``$XDG_STATE_HOME/meshssh`` (``~/.local/state``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/meshssh")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshssh"


def default_name() -> str:
    """This machine's host name as a DNS label (``My_Laptop.local`` → ``my-laptop``)."""
    label = socket.gethostname().split(".")[0].lower()
    label = re.sub(r"[^a-z0-9-]+", "-", label).strip("-")[:63].strip("-")
    return label or "peer"


def _check_host_port(setting: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(setting, f"expected HOST:PORT, got {value!r}")


@dataclass(frozen=True, slots=True)
class Flags:
    """The local flags of SPEC §3."""

    allow_server_ssh: bool = False
    local_port_forwarding: bool = False
    remote_port_forwarding: bool = False
    sftp: bool = False
    root_login: bool = False
    disable_ssh_auth: bool = False
    jwt_cache_ttl: int = 0
    agent_forwarding: bool = False

    def wire(self) -> PeerFlags:
        """As reported to the management plane."""
        return PeerFlags(
            server_ssh_allowed=self.allow_server_ssh,
            local_port_forwarding=self.local_port_forwarding,
            remote_port_forwarding=self.remote_port_forwarding,
            sftp=self.sftp,
            root_login=self.root_login,
            disable_ssh_auth=self.disable_ssh_auth,
            jwt_cache_ttl=self.jwt_cache_ttl,
            agent_forwarding=self.agent_forwarding,
        )

    def sshd_args(self) -> list[str]:
        """The feature flags meshssh-sshd takes (same names as on ``meshssh up``)."""
        pairs = [
            (self.local_port_forwarding, "--enable-ssh-local-port-forwarding"),
            (self.remote_port_forwarding, "--enable-ssh-remote-port-forwarding"),
            (self.sftp, "--enable-ssh-sftp"),
            (self.root_login, "--enable-ssh-root"),
            (self.disable_ssh_auth, "--disable-ssh-auth"),
            (self.agent_forwarding, "--enable-ssh-agent-forwarding"),
        ]
        return [flag for on, flag in pairs if on]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The agent's settings (see the module docstring)."""

    state_dir: Path
    mesh_ip: str
    name: str = field(default_factory=default_name)
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: Path | None = None
    management_url: str = ""
    setup_key: str = ""
    flags: Flags = Flags()
    ssh_port: int = 22022
    relay_port: int = 22
    relay_mode: RelayModeChoice = "auto"
    native_upstream: str = ""
    heartbeat_interval: float = 5.0
    child_stop_timeout: float = 1.0  # SIGTERM to SIGKILL: a disabled peer stops within 2 s
    sshd_ops_listen: str = "127.0.0.1:0"  # HOST:PORT of sshd's /metrics; port 0 picks one
    relay_ops_listen: str = "127.0.0.1:0"
    ssh_config_file: Path | None = None  # the OpenSSH drop-in (None: SPEC §9's default path)
    disable_ssh_config: bool = False  # keep no drop-in (also MESHSSH_DISABLE_SSH_CONFIG=1)
    sshd_bin: str = ""
    relay_bin: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.mesh_ip)
        except ValueError as e:
            raise ConfigError("--mesh-ip", f"not an IP address: {self.mesh_ip!r}") from e
        if not _NAME.match(self.name):
            raise ConfigError("--name", f"{self.name!r} is not a DNS label (a-z, 0-9, -)")
        for setting, port in (("--ssh-port", self.ssh_port), ("--relay-port", self.relay_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(setting, f"port {port} outside 0..65535")
        if self.ssh_port == self.relay_port and self.ssh_port != 0:
            raise ConfigError("--relay-port", "must differ from --ssh-port")
        for setting, value in (
            ("--sshd-ops-listen", self.sshd_ops_listen),
            ("--relay-ops-listen", self.relay_ops_listen),
        ):
            _check_host_port(setting, value)
        if self.heartbeat_interval <= 0:
            raise ConfigError("--heartbeat-interval", "must be positive")

    def with_flags(self, flags: Flags) -> AgentConfig:
        """The same settings with other flags."""
        return replace(self, flags=flags)

    @property
    def host_key_path(self) -> Path:
        """The peer's Ed25519 SSH host key (0600)."""
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def credential_path(self) -> Path:
        """The peer id and credential the management plane issued (0600)."""
        return self.state_dir / "peer.json"

    @property
    def socket_path(self) -> Path:
        """The agent's Unix socket for the local CLI."""
        return self.state_dir / "agent.sock"

    @property
    def lock_path(self) -> Path:
        """Held (flock) by the running agent; records its pid."""
        return self.state_dir / "agent.lock"

    @property
    def log_path(self) -> Path:
        """Where a daemonized agent writes its log."""
        return self.state_dir / "agent.log"

    def address(self, port: int) -> str:
        """``HOST:PORT`` on the mesh address (IPv6 bracketed)."""
        host = f"[{self.mesh_ip}]" if ":" in self.mesh_ip else self.mesh_ip
        return f"{host}:{port}"

    def meta(self) -> PeerMeta:
        """What the peer reports about itself; meshssh's agent always supports native SSH."""
        return PeerMeta(
            version=VERSION,
            capabilities=("native_ssh",),
            flags=self.flags.wire(),
            hostname=socket.gethostname()[:255],
            os=platform.system().lower(),
        )
