"""How the agent invokes its children and picks the relay mode (SPEC §2, §3, §11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshssh_agent.children import (
    RelayMode,
    choose_relay_mode,
    relay_argv,
    relay_wanted,
    sshd_argv,
    sshd_wanted,
)
from meshssh_agent.settings import AgentConfig, Flags
from meshssh_common.errors import ConfigError


def config(**kw: object) -> AgentConfig:
    return AgentConfig(state_dir=Path("/tmp/x"), mesh_ip="127.0.0.2", name="srv", **kw)  # type: ignore[arg-type]


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_sshd_runs_only_when_both_switches_are_on_and_the_relay_also_for_a_native_daemon() -> None:
    on, off = config(flags=Flags(allow_server_ssh=True)), config()
    assert sshd_wanted(on, True)
    assert not sshd_wanted(on, False)
    assert not sshd_wanted(off, True)
    assert relay_wanted(on, True)
    assert not relay_wanted(on, False)
    assert relay_wanted(config(native_upstream="127.0.0.1:22"), False)


def test_sshd_gets_the_contract_flags_and_listens_on_the_mesh_address() -> None:
    flags = Flags(allow_server_ssh=True, sftp=True, root_login=True, disable_ssh_auth=True,
                  agent_forwarding=True)  # fmt: skip
    argv = sshd_argv(config(flags=flags, ssh_port=22022), "p1")
    assert value(argv, "--peer-id") == "p1"
    assert value(argv, "--listen") == "127.0.0.2:22022"
    assert value(argv, "--trusted-relay") == "127.0.0.2"
    assert value(argv, "--host-key") == "/tmp/x/ssh_host_ed25519_key"
    assert value(argv, "--ops-listen") == "127.0.0.1:0"
    assert {"--enable-ssh-sftp", "--enable-ssh-root", "--disable-ssh-auth",
            "--enable-ssh-agent-forwarding"} <= set(argv)  # fmt: skip
    assert "--enable-ssh-local-port-forwarding" not in argv


def test_the_relay_knows_sshd_only_when_the_peer_may_run_it() -> None:
    mode = RelayMode("nftables", "requested", "eth1")
    allowed = relay_argv(config(flags=Flags(allow_server_ssh=True)), "p1", mode)
    assert value(allowed, "--sshd") == "127.0.0.2:22022"
    assert value(allowed, "--listen") == "127.0.0.2:22"
    assert value(allowed, "--mesh-interface") == "eth1"
    native_only = relay_argv(config(native_upstream="127.0.0.1:22"), "p1", RelayMode("proxy", ""))
    assert "--sshd" not in native_only
    assert value(native_only, "--native-upstream") == "127.0.0.1:22"
    v6 = relay_argv(AgentConfig(state_dir=Path("/x"), mesh_ip="fd00::7", name="a"), "p1", mode)
    assert value(v6, "--listen") == "[fd00::7]:22"


def test_a_loopback_mesh_gets_the_proxy_and_asking_for_nftables_there_is_a_clear_error() -> None:
    auto = choose_relay_mode(config())
    assert auto.mode == "proxy"
    assert auto.reason.startswith("nftables unavailable: ")
    assert choose_relay_mode(config(relay_mode="proxy")) == RelayMode("proxy", "requested")
    with pytest.raises(ConfigError, match="nftables cannot run here"):
        choose_relay_mode(config(relay_mode="nftables"))


def test_bad_settings_name_their_flag() -> None:
    with pytest.raises(ConfigError, match="--mesh-ip"):
        AgentConfig(state_dir=Path("/x"), mesh_ip="not-an-ip", name="a")
    with pytest.raises(ConfigError, match="--name"):
        AgentConfig(state_dir=Path("/x"), mesh_ip="127.0.0.2", name="Bad_Name")
    with pytest.raises(ConfigError, match="--relay-port"):
        AgentConfig(state_dir=Path("/x"), mesh_ip="127.0.0.2", name="a", ssh_port=22, relay_port=22)


def test_the_childrens_ops_listeners_follow_the_agent_flags() -> None:
    fixed = config(
        flags=Flags(allow_server_ssh=True),
        sshd_ops_listen="0.0.0.0:9103",
        relay_ops_listen="0.0.0.0:9104",
    )
    assert value(sshd_argv(fixed, "p1"), "--ops-listen") == "0.0.0.0:9103"
    assert value(relay_argv(fixed, "p1", RelayMode("proxy", "")), "--ops-listen") == "0.0.0.0:9104"
    assert (
        value(relay_argv(config(), "p1", RelayMode("proxy", "")), "--ops-listen") == "127.0.0.1:0"
    )
    for bad in ("9103", "host:", ":9103", "127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="--sshd-ops-listen"):
            config(sshd_ops_listen=bad)
