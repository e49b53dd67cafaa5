"""The OpenSSH drop-in: validated host names, split lines, real OpenSSH parses and applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshssh_agent.ssh_config import MAX_LINE, DropIn, install, is_valid_host, render, uninstall
from meshssh_testkit import openssh_available
from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import run_command_sync

HOSTILE = [
    'evil"host',
    "evil host",
    "a,b",
    "*",
    "web*",
    "x\nProxyCommand sh -c 'rm -rf ~'",
    "!negated",
    "-oProxyCommand=x",
    "host%h",
    "",
    "a" * 64,
    "trailing-.example",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_never_reach_the_drop_in(name: str) -> None:
    assert not is_valid_host(name)
    text = render([name, "good-peer"], DropIn("/usr/bin/meshssh"))
    assert "good-peer" in text
    if name:
        assert name not in text.replace("good-peer", "")


@pytest.mark.parametrize("name", ["demo-server", "peer-1.mesh.example", "100.64.0.7", "fd00::7"])
def test_plain_dns_names_and_addresses_are_kept(name: str) -> None:
    assert is_valid_host(name)
    assert name in render([name], DropIn("/usr/bin/meshssh"))


def test_a_thousand_peers_give_lines_under_1024_characters_with_no_peer_dropped() -> None:
    hosts = [f"peer-{i:04d}.mesh.example" for i in range(1000)]
    hosts += [f"100.64.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    text = render(hosts, DropIn("/usr/local/bin/meshssh", Path("/var/lib/meshssh")))
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE < 1024
    listed = set()
    for line in text.splitlines():
        if line.startswith("Match host "):
            listed |= set(line.split('"')[1].split(","))
    assert listed == set(hosts)
    assert text.count("Match host ") > 1


def run_ssh_g(config: Path, host: str) -> dict[str, str]:
    out = run_command_sync("ssh", "-F", str(config), "-G", host, timeout=30, check=True).out
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_openssh_applies_the_proxy_only_to_mesh_hosts_and_probes_no_other_host(
    tmp_path: Path,
) -> None:
    need_tool(openssh_available(), "the OpenSSH client")
    probes = tmp_path / "probes"
    fake = tmp_path / "meshssh"  # records each detect probe, then says "MeshSSH server"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {probes}\nexit 0\n')
    fake.chmod(0o755)
    hosts = [f"peer-{i}" for i in range(1000)] + ["100.64.0.7"]
    config = tmp_path / "dropin.conf"
    config.write_text(render(hosts, DropIn(str(fake))))
    applied = run_ssh_g(config, "peer-999")
    assert applied["proxycommand"] == f"{fake} ssh proxy %h %p"  # -G shows it unexpanded
    assert applied["stricthostkeychecking"] == "false"
    other = run_ssh_g(config, "github.com")
    assert "proxycommand" not in other
    assert probes.read_text().splitlines() == ["ssh detect peer-999 22"]


def test_a_non_meshssh_server_keeps_plain_openssh(tmp_path: Path) -> None:
    need_tool(openssh_available(), "the OpenSSH client")
    config = tmp_path / "dropin.conf"
    config.write_text(render(["peer-1"], DropIn("/bin/false")))  # detect exits non-zero
    assert "proxycommand" not in run_ssh_g(config, "peer-1")


def test_install_writes_atomically_adds_one_include_and_uninstall_removes_both(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host old\n    User me\n")
    target = home / ".ssh" / "meshssh.conf"
    text = render(["peer-1"], DropIn("/usr/bin/meshssh"))
    install(text, target, home=home)
    install(text, target, home=home)
    config = (home / ".ssh" / "config").read_text()
    assert config.startswith("Include meshssh.conf\n")
    assert config.count("Include meshssh.conf") == 1
    assert "Host old" in config
    assert target.read_text() == text
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".meshssh.conf.")]
    assert uninstall(target, home=home)
    assert not target.exists()
    assert (home / ".ssh" / "config").read_text() == "Host old\n    User me\n"


def test_an_unusable_executable_path_is_refused() -> None:
    with pytest.raises(ValueError, match="unusable"):
        render(["peer-1"], DropIn('/opt/we"ird/meshssh'))
