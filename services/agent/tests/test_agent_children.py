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
from meshssh_agent.settings import AgentSettings
from meshssh_common.errors import ConfigError
from meshssh_common.settings import parse_settings
from meshssh_common.wire import PeerFlags


def parse(*args: str) -> AgentSettings:
    return parse_settings(AgentSettings, list(args), prog="meshssh-agent")


def config(*args: str, mesh_ip: str = "127.0.0.2") -> AgentSettings:
    return parse("--state-dir", "/tmp/x", "--mesh-ip", mesh_ip, "--name", "srv", *args)


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_sshd_runs_only_when_both_switches_are_on_and_the_relay_also_for_a_native_daemon() -> None:
    on, off = config("--allow-server-ssh"), config()
    assert sshd_wanted(on, True)
    assert not sshd_wanted(on, False)
    assert not sshd_wanted(off, True)
    assert relay_wanted(on, True)
    assert not relay_wanted(on, False)
    assert relay_wanted(config("--native-upstream", "127.0.0.1:22"), False)


def test_sshd_gets_the_contract_flags_and_listens_on_the_mesh_address() -> None:
    settings = config(
        "--allow-server-ssh",
        "--enable-ssh-sftp",
        "--enable-ssh-root",
        "--disable-ssh-auth",
        "--enable-ssh-agent-forwarding",
    )
    assert settings.flags.sftp
    assert settings.flags.server_ssh_allowed
    argv = sshd_argv(settings, "p1")
    assert value(argv, "--peer-id") == "p1"
    assert value(argv, "--listen") == "127.0.0.2:22022"
    assert value(argv, "--relay-socket") == "/tmp/x/sshd/relay.sock"
    assert "--trusted-relay" not in argv  # TCP 22022 never takes a PROXY header
    assert value(argv, "--host-key") == "/tmp/x/ssh_host_ed25519_key"
    assert value(argv, "--ops-listen") == "127.0.0.1:0"
    assert {
        "--enable-ssh-sftp",
        "--enable-ssh-root",
        "--disable-ssh-auth",
        "--enable-ssh-agent-forwarding",
    } <= set(argv)
    assert "--enable-ssh-local-port-forwarding" not in argv


def test_the_relay_knows_sshd_only_when_the_peer_may_run_it() -> None:
    mode = RelayMode("nftables", "requested", "eth1")
    allowed = relay_argv(config("--allow-server-ssh"), "p1", mode)
    assert value(allowed, "--sshd") == "127.0.0.2:22022"
    assert value(allowed, "--sshd-socket") == "/tmp/x/sshd/relay.sock"  # sshd's --relay-socket
    assert value(allowed, "--listen") == "127.0.0.2:22"
    assert value(allowed, "--mesh-interface") == "eth1"
    native_only = relay_argv(
        config("--native-upstream", "127.0.0.1:22"), "p1", RelayMode("proxy", "")
    )
    assert "--sshd" not in native_only
    assert "--sshd-socket" not in native_only
    assert value(native_only, "--native-upstream") == "127.0.0.1:22"
    v6 = relay_argv(config(mesh_ip="fd00::7"), "p1", mode)
    assert value(v6, "--listen") == "[fd00::7]:22"


def test_a_loopback_mesh_gets_the_proxy_and_asking_for_nftables_there_is_a_clear_error() -> None:
    auto = choose_relay_mode(config())
    assert auto.mode == "proxy"
    assert auto.reason.startswith("nftables unavailable: ")
    assert choose_relay_mode(config("--relay-mode", "proxy")) == RelayMode("proxy", "requested")
    with pytest.raises(ConfigError, match="nftables cannot run here"):
        choose_relay_mode(config("--relay-mode", "nftables"))


def test_bad_settings_name_their_flag() -> None:
    with pytest.raises(ConfigError, match="--mesh-ip"):
        config(mesh_ip="not-an-ip")
    with pytest.raises(ConfigError, match="--name"):
        config("--name", "Bad_Name")
    with pytest.raises(ConfigError, match="--relay-port"):
        config("--ssh-port", "22", "--relay-port", "22")
    with pytest.raises(ConfigError, match="--ssh-jwt-cache-ttl"):
        config("--ssh-jwt-cache-ttl", "-1")


def test_flags_round_trip_through_the_wire_form() -> None:
    settings = config("--enable-ssh-sftp", "--ssh-jwt-cache-ttl", "30")
    changed = settings.with_flags(PeerFlags(server_ssh_allowed=True, jwt_cache_ttl=5))
    assert changed.allow_server_ssh
    assert not changed.enable_ssh_sftp
    assert changed.flags == PeerFlags(server_ssh_allowed=True, jwt_cache_ttl=5)
    assert settings.flags == PeerFlags(sftp=True, jwt_cache_ttl=30)


def test_the_childrens_ops_listeners_follow_the_agent_flags() -> None:
    fixed = config(
        "--allow-server-ssh",
        "--sshd-ops-listen",
        "0.0.0.0:9103",
        "--relay-ops-listen",
        "0.0.0.0:9104",
    )
    assert value(sshd_argv(fixed, "p1"), "--ops-listen") == "0.0.0.0:9103"
    assert value(relay_argv(fixed, "p1", RelayMode("proxy", "")), "--ops-listen") == "0.0.0.0:9104"
    assert (
        value(relay_argv(config(), "p1", RelayMode("proxy", "")), "--ops-listen") == "127.0.0.1:0"
    )
    for bad in ("9103", "host:", ":9103", "127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="--sshd-ops-listen"):
            config("--sshd-ops-listen", bad)


def test_ssh_permit_open_is_parsed_reported_in_metadata_and_passed_to_sshd() -> None:
    from meshssh_cli.commands.up import agent_argv
    from meshssh_cli.main import build_parser
    from meshssh_sshd.settings import SshdSettings

    settings = config(
        "--allow-server-ssh", "--ssh-permit-open", "DB:5432", "--ssh-permit-open", "[::1]:*"
    )
    assert settings.flags.permit_open == ("db:5432", "[::1]:*")
    argv = sshd_argv(settings, "p1")
    sshd = parse_settings(SshdSettings, argv[1:], prog="meshssh-sshd")  # argv[0]: the binary
    assert sshd.permit_open.allows("db", 5432)
    assert not sshd.permit_open.allows("127.0.0.1", 4222)
    # `meshssh up` hands the agent the same entries on its command line.
    up = build_parser("up").parse_args(
        [
            "up",
            "--mesh-ip",
            "127.0.0.2",
            "--ssh-permit-open",
            "DB:5432",
            "--ssh-permit-open",
            "[::1]:*",
        ]
    )
    again = parse(*agent_argv(up))
    assert again.flags.permit_open == ("db:5432", "[::1]:*")
    default = config("--allow-server-ssh")
    assert default.flags.permit_open == ("any",)
    assert not any(a.startswith("--ssh-permit-open") for a in sshd_argv(default, "p1"))
    with pytest.raises(ConfigError, match="--ssh-permit-open"):
        config("--ssh-permit-open", "any", "--ssh-permit-open", "db:1")


def test_children_get_the_peers_creds_file_and_the_ca_and_the_ports_are_reported() -> None:
    # The agent sets nats_creds itself after registration (<state-dir>/nats.creds).
    settings = config("--allow-server-ssh", "--nats-ca", "/etc/meshssh/ca.crt").model_copy(
        update={"nats_creds": Path("/tmp/x/nats.creds")}
    )
    mode = RelayMode("proxy", "requested")
    for argv in (sshd_argv(settings, "p1"), relay_argv(settings, "p1", mode)):
        assert value(argv, "--nats-creds") == "/tmp/x/nats.creds"
        assert value(argv, "--nats-ca") == "/etc/meshssh/ca.crt"
    bare = config()  # before registration, or management issued no NATS identity
    assert "--nats-creds" not in sshd_argv(bare, "p1")
    assert "--nats-ca" not in sshd_argv(bare, "p1")
    meta = config("--ssh-port", "2222", "--relay-port", "2200").meta()
    assert (meta.ssh_port, meta.relay_port) == (2222, 2200)


def test_accept_idp_tokens_goes_from_meshssh_up_through_the_agent_to_sshd() -> None:
    from meshssh_cli.commands.up import agent_argv
    from meshssh_cli.main import build_parser
    from meshssh_sshd.settings import SshdSettings

    up = build_parser("up").parse_args(
        ["up", "--mesh-ip", "127.0.0.2", "--allow-server-ssh", "--accept-idp-tokens"]
    )
    settings = parse(*agent_argv(up))
    assert settings.flags.accept_idp_tokens  # reported to management in the metadata
    argv = sshd_argv(settings, "p1")
    assert "--accept-idp-tokens" in argv
    assert parse_settings(SshdSettings, argv[1:], prog="meshssh-sshd").accept_idp_tokens
    default = sshd_argv(config("--allow-server-ssh"), "p1")
    assert "--accept-idp-tokens" not in default
    assert not parse_settings(SshdSettings, default[1:], prog="meshssh-sshd").accept_idp_tokens
    changed = config().with_flags(PeerFlags(accept_idp_tokens=True))
    assert changed.accept_idp_tokens  # `meshssh up` on a running agent
