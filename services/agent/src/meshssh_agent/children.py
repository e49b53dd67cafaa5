"""The agent's two children: when they run, how they are invoked, and the relay mode.

SPEC §2: sshd runs only when the peer was started with ``--allow-server-ssh`` AND the map has
SSH enabled for it. The relay runs whenever sshd does, and also while SSH is off if a native
SSH daemon should receive port-22 connections (``--native-upstream``).

Relay mode: ``nftables`` where it can run (root, the ``nft`` tool, and the mesh address on a
real, non-loopback interface, whose name the rule needs), else ``proxy``; the reason is kept
for ``meshssh status``.

:class:`Children` holds the two supervised processes (:class:`~meshssh_agent.supervisor.Child`)
and decides, after every map and flag change, which of them should run.

Example::

    mode = choose_relay_mode(settings)
    sshd_argv(settings, peer_id)   # ["/…/meshssh-sshd", "--peer-id", "p1", "--listen", ...]
    children = Children(lambda: settings, lambda: peer_id, log=log)
    children.evaluate(ssh_enabled=True)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshssh_agent.settings import AgentSettings
from meshssh_agent.supervisor import Child
from meshssh_common.errors import ConfigError
from meshssh_common.logs import BoundLogger
from meshssh_common.signed_doc import PINS_FILE
from meshssh_common.wire import PeerFlags

__all__ = [
    "Children",
    "RelayMode",
    "choose_relay_mode",
    "interface_of",
    "relay_argv",
    "relay_wanted",
    "service_executable",
    "sshd_args",
    "sshd_argv",
    "sshd_wanted",
]


@dataclass(frozen=True, slots=True)
class RelayMode:
    """The mode the relay runs in, why, and (nftables) on which interface."""

    mode: str
    reason: str
    interface: str = ""


def service_executable(name: str, override: str = "") -> str:
    """The program ``name`` (``meshssh-sshd``...): ``override``, beside this Python, or PATH."""
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


def _nftables_blocker(config: AgentSettings) -> tuple[str, str]:
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


def choose_relay_mode(config: AgentSettings) -> RelayMode:
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


def sshd_wanted(config: AgentSettings, ssh_enabled: bool) -> bool:
    """SPEC §2: both the local flag and the management switch are on."""
    return config.allow_server_ssh and ssh_enabled


def relay_wanted(config: AgentSettings, ssh_enabled: bool) -> bool:
    """The relay runs with sshd, and while SSH is off only to reach a native daemon."""
    return sshd_wanted(config, ssh_enabled) or bool(config.native_upstream)


def sshd_args(flags: PeerFlags) -> list[str]:
    """The feature flags meshssh-sshd takes (same names as on ``meshssh up``)."""
    pairs = [
        (flags.local_port_forwarding, "--enable-ssh-local-port-forwarding"),
        (flags.remote_port_forwarding, "--enable-ssh-remote-port-forwarding"),
        (flags.sftp, "--enable-ssh-sftp"),
        (flags.root_login, "--enable-ssh-root"),
        (flags.disable_ssh_auth, "--disable-ssh-auth"),
        (flags.agent_forwarding, "--enable-ssh-agent-forwarding"),
        (flags.accept_idp_tokens, "--accept-idp-tokens"),
    ]
    args = [flag for on, flag in pairs if on]
    if flags.permit_open != ("any",):
        args += [f"--ssh-permit-open={spec}" for spec in flags.permit_open]
    return args


def _common(config: AgentSettings, ops_listen: str) -> list[str]:
    args = [
        "--nats-url",
        config.nats_url,
        "--ops-listen",
        ops_listen,
        "--log-level",
        config.log_level,
        "--log-format",
        config.log_format,
        "--instance",
        config.name,
        # Stopping must fit in the agent's SIGTERM-to-SIGKILL window.
        "--shutdown-grace",
        f"{max(0.2, config.child_stop_timeout * 0.6):.2f}",
    ]
    if config.nats_creds is not None:  # the peer's own identity, from registration
        args += ["--nats-creds", str(config.nats_creds)]
    if config.nats_ca is not None:
        args += ["--nats-ca", str(config.nats_ca)]
    return args


def sshd_argv(config: AgentSettings, peer_id: str) -> list[str]:
    """meshssh-sshd on ``<mesh-ip>:<ssh-port>``; the relay reaches it on its relay socket."""
    return [
        service_executable("meshssh-sshd", config.sshd_bin),
        "--peer-id",
        peer_id,
        "--listen",
        config.address(config.ssh_port),
        "--host-key",
        str(config.files.host_key),
        "--relay-socket",
        str(config.files.sshd_relay_socket),
        "--pins",  # written from each registration reply before children start
        str(config.state_dir / PINS_FILE),
        *sshd_args(config.flags),
        *_common(config, config.sshd_ops_listen),
    ]


def relay_argv(config: AgentSettings, peer_id: str, mode: RelayMode) -> list[str]:
    """meshssh-relay on ``<mesh-ip>:<relay-port>`` (``--sshd`` only when sshd may run)."""
    argv = [
        service_executable("meshssh-relay", config.relay_bin),
        "--peer-id",
        peer_id,
        "--listen",
        config.address(config.relay_port),
        "--mode",
        mode.mode,
        "--pins",
        str(config.state_dir / PINS_FILE),
        *_common(config, config.relay_ops_listen),
    ]
    if config.allow_server_ssh:
        argv += ["--sshd", config.address(config.ssh_port)]
        argv += ["--sshd-socket", str(config.files.sshd_relay_socket)]
    if config.native_upstream:
        argv += ["--native-upstream", config.native_upstream]
    if mode.interface:
        argv += ["--mesh-interface", mode.interface]
    return argv


class Children:
    """meshssh-sshd and meshssh-relay of one agent, started and stopped as SPEC §2 says.

    Args:
        settings: the agent's current settings (flags may change while it runs).
        peer_id: the registered peer id (children start only after registration).
        log: the agent's logger.
        on_change: called after any child changes state (the agent republishes its heartbeat).
        on_restart: called with a child's name when it is restarted after a crash (a metric).
    """

    def __init__(
        self,
        settings: Callable[[], AgentSettings],
        peer_id: Callable[[], str],
        *,
        log: BoundLogger,
        on_change: Callable[[], None],
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_change = on_change
        self._log = log
        self.relay_mode = choose_relay_mode(settings())
        self.ssh_enabled = False
        self.enabled = False  # registered and not stopping: evaluate() may start children
        stop_timeout = settings().child_stop_timeout
        self.sshd = Child(
            "sshd",
            lambda: sshd_argv(settings(), peer_id()),
            log=log,
            stop_timeout=stop_timeout,
            on_change=self._changed,
            on_restart=on_restart,
        )
        self.relay = Child(
            "relay",
            lambda: relay_argv(settings(), peer_id(), self.relay_mode),
            log=log,
            stop_timeout=stop_timeout,
            on_killed=lambda: self._relay_cleanup(peer_id()),
            on_change=self._changed,
            on_restart=on_restart,
        )

    @property
    def all(self) -> tuple[Child, Child]:
        """Both children."""
        return self.sshd, self.relay

    @property
    def up(self) -> bool:
        """Every child that should run is running (readiness)."""
        return self.sshd.up and self.relay.up

    def evaluate(self, ssh_enabled: bool | None = None) -> None:
        """Start or stop the children for the current flags and map (SPEC §2)."""
        if ssh_enabled is not None:
            self.ssh_enabled = ssh_enabled
        if not self.enabled:
            return  # not registered yet, or stopping: shutdown() decides now
        settings = self._settings()
        self.sshd.want(sshd_wanted(settings, self.ssh_enabled))
        # A relay that sshd's connections pass through outlives a stopping sshd, so its last
        # words ("access revoked" when SSH is switched off) still reach the clients.
        draining = self.relay.desired and self.sshd.state != "stopped"
        self.relay.want(relay_wanted(settings, self.ssh_enabled) or draining)

    def flags_changed(self, old: AgentSettings, new: AgentSettings) -> None:
        """Restart what new local flags affect, then re-evaluate."""
        if sshd_args(old.flags) != sshd_args(new.flags):
            self.sshd.restart()
        if old.allow_server_ssh != new.allow_server_ssh:
            self.relay.restart()  # its --sshd depends on it
        self.evaluate()

    async def shutdown(self) -> None:
        """Stop both children for good (SIGTERM, then SIGKILL) and wait for them."""
        self.enabled = False
        await asyncio.gather(self.sshd.shutdown(), self.relay.shutdown())

    def _changed(self) -> None:
        self.evaluate()  # e.g. sshd has stopped: the relay may follow
        self._on_change()

    async def _relay_cleanup(self, peer_id: str) -> None:
        # The relay was SIGKILLed and could not remove its nftables rule: do it for it.
        if self.relay_mode.mode != "nftables":
            return
        argv = [*relay_argv(self._settings(), peer_id, self.relay_mode), "--cleanup"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._log.info("relay rule cleanup ran", extra={"exit_code": proc.returncode})
