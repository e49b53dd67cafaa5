"""The agent's two children: how meshssh-sshd and meshssh-relay are invoked, and the relay mode.

SPEC §2: sshd runs only when the peer was started with ``--allow-server-ssh`` AND the map has
SSH enabled for it. The relay runs whenever sshd does, and also while SSH is off if a native
SSH daemon should receive port-22 connections (``--native-upstream``).

Relay mode: ``nftables`` where it can run (root, the ``nft`` tool, and the mesh address on a
real, non-loopback interface, whose name the rule needs), else ``proxy``; the reason is kept
for ``meshssh status``.

Example::

    mode = choose_relay_mode(config)
    sshd_argv(config, peer_id)   # ["/…/meshssh-sshd", "--peer-id", "p1", "--listen", ...]
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from meshssh_agent.settings import AgentConfig
from meshssh_common.errors import ConfigError

__all__ = [
    "RelayMode",
    "choose_relay_mode",
    "interface_of",
    "relay_argv",
    "relay_wanted",
    "sshd_argv",
    "sshd_wanted",
]


@dataclass(frozen=True, slots=True)
class RelayMode:
    """The mode the relay runs in, why, and (nftables) on which interface."""

    mode: str
    reason: str
    interface: str = ""


def _executable(name: str, override: str) -> str:
    if override:
        return override
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def interface_of(ip: str) -> str | None:
    """The interface that holds address ``ip`` (via ``ip -j addr``), or None."""
    exe = shutil.which("ip")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-j", "addr", "show"], capture_output=True, check=True, timeout=5
        ).stdout
        links = json.loads(out or b"[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    wanted = ipaddress.ip_address(ip)
    for link in links:
        for info in link.get("addr_info", []):
            try:
                if ipaddress.ip_address(info.get("local", "")) == wanted:
                    return str(link["ifname"])
            except ValueError:
                continue
    return None


def _nftables_blocker(config: AgentConfig) -> tuple[str, str]:
    """Why nftables cannot be used ("" when it can), and the mesh interface."""
    if os.geteuid() != 0:
        return "not root", ""
    if shutil.which("nft") is None:
        return "the nft tool is not installed", ""
    if ipaddress.ip_address(config.mesh_ip).is_loopback:
        return "the mesh address is a loopback address", ""
    interface = interface_of(config.mesh_ip)
    if interface is None:
        return "the mesh address is on no interface", ""
    if interface == "lo":
        return "the mesh address is on the loopback interface", ""
    return "", interface


def choose_relay_mode(config: AgentConfig) -> RelayMode:
    """Resolve ``--relay-mode`` (``auto`` picks nftables where it can run).

    Raises:
        ConfigError: ``nftables`` was asked for and cannot run here (the message says why).
    """
    if config.relay_mode == "proxy":
        return RelayMode("proxy", "requested")
    blocker, interface = _nftables_blocker(config)
    if config.relay_mode == "nftables":
        if blocker:
            raise ConfigError("--relay-mode", f"nftables cannot run here: {blocker}")
        return RelayMode("nftables", "requested", interface)
    if blocker:
        return RelayMode("proxy", f"nftables unavailable: {blocker}")
    return RelayMode("nftables", f"kernel redirect on {interface}", interface)


def sshd_wanted(config: AgentConfig, ssh_enabled: bool) -> bool:
    """SPEC §2: both the local flag and the management switch are on."""
    return config.flags.allow_server_ssh and ssh_enabled


def relay_wanted(config: AgentConfig, ssh_enabled: bool) -> bool:
    """The relay runs with sshd, and while SSH is off only to reach a native daemon."""
    return sshd_wanted(config, ssh_enabled) or bool(config.native_upstream)


def _common(config: AgentConfig, ops_listen: str) -> list[str]:
    args = [
        "--nats-url", config.nats_url,
        "--ops-listen", ops_listen,
        "--log-level", config.log_level,
        "--log-format", config.log_format,
        "--instance", config.name,
        # Stopping must fit in the agent's SIGTERM-to-SIGKILL window.
        "--shutdown-grace", f"{max(0.2, config.child_stop_timeout * 0.6):.2f}",
    ]  # fmt: skip
    if config.nats_creds is not None:
        args += ["--nats-creds", str(config.nats_creds)]
    return args


def sshd_argv(config: AgentConfig, peer_id: str) -> list[str]:
    """meshssh-sshd on ``<mesh-ip>:<ssh-port>``, trusting PROXY headers from the mesh address."""
    return [
        _executable("meshssh-sshd", config.sshd_bin),
        "--peer-id", peer_id,
        "--listen", config.address(config.ssh_port),
        "--host-key", str(config.host_key_path),
        "--trusted-relay", config.mesh_ip,
        *config.flags.sshd_args(),
        *_common(config, config.sshd_ops_listen),
    ]  # fmt: skip


def relay_argv(config: AgentConfig, peer_id: str, mode: RelayMode) -> list[str]:
    """meshssh-relay on ``<mesh-ip>:<relay-port>`` (``--sshd`` only when sshd may run)."""
    argv = [
        _executable("meshssh-relay", config.relay_bin),
        "--peer-id", peer_id,
        "--listen", config.address(config.relay_port),
        "--mode", mode.mode,
        *_common(config, config.relay_ops_listen),
    ]  # fmt: skip
    if config.flags.allow_server_ssh:
        argv += ["--sshd", config.address(config.ssh_port)]
    if config.native_upstream:
        argv += ["--native-upstream", config.native_upstream]
    if mode.interface:
        argv += ["--mesh-interface", mode.interface]
    return argv
