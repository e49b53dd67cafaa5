"""Server markers: the drop-in's ``test -f`` answers "MeshSSH?" without starting Python.

- the Match line tests ``<marks>/%p/%h`` first and runs ``meshssh ssh detect`` only without a
  marker; real OpenSSH (``ssh -G``) follows it (a full connection through the proxy:
  ``cli/tests/test_ssh_detect_config.py``);
- a real agent keeps the markers from its map (the real meshssh-policy copies each server's
  reported ports into it; peers do not hear each other's heartbeats), follows the operator's
  switch, and removes them on ``down``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from meshssh_agent.server_marks import ServerMarks, write_marks
from meshssh_agent.ssh_config import DropIn, render
from meshssh_common.wire import RemotePeer
from meshssh_testkit import openssh_available, script
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.netmaps import make_map
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory, need_tool

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"
SERVER = RemotePeer(
    id="p2",
    name="Demo-Server",
    mesh_ip="127.0.0.2",
    ssh_host_key=KEY,
    ssh_enabled=True,
    ssh_port=22022,
    relay_port=22,
)
KEYLESS = RemotePeer(
    id="p4", name="printer", mesh_ip="127.0.0.5", ssh_enabled=True, ssh_port=22022, relay_port=22
)
NAMES = ("Demo-Server", "demo-server", "127.0.0.2")  # as the map spells it, lower case, address


def listing(directory: Path) -> set[str]:
    for _ in range(100):  # the agent may be removing a port directory while this reads it
        try:
            if not directory.exists():
                return set()
            return {f"{p.parent.name}/{p.name}" for p in directory.glob("*/*")}
        except FileNotFoundError:
            continue
    raise AssertionError(f"{directory} kept changing while being listed")


def test_the_match_line_tests_the_marker_before_it_starts_detect(tmp_path: Path) -> None:
    marks = tmp_path / "state dir%x" / "ssh-servers"
    text = render(["demo-server", 'evil"name'], DropIn("/usr/bin/meshssh", tmp_path, marks))
    quoted = f"'{marks}'".replace("%", "%%")
    assert (
        f'Match host "demo-server" exec "test -f {quoted}/%p/%h || /usr/bin/meshssh ssh detect '
        f'--state-dir {tmp_path} %h %p"' in text
    )
    assert "evil" not in text


def ssh_g(config: Path, *args: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["ssh", "-F", str(config), "-G", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_openssh_takes_a_marked_host_without_detect_and_falls_back_without_a_marker(
    tmp_path: Path, shell: str
) -> None:
    need_tool(openssh_available(), "the OpenSSH client")
    probes = tmp_path / "probes"
    fake = tmp_path / "meshssh"  # records each detect run, then says "MeshSSH server"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {probes}\nexit 0\n')
    fake.chmod(0o755)
    marks = tmp_path / "ssh-servers"
    write_marks(marks, [(22, "peer-1"), (22, "100.64.0.7")])
    config = tmp_path / "dropin.conf"
    config.write_text(render(["peer-1", "peer-2", "100.64.0.7"], DropIn(str(fake), marks=marks)))
    env = {**os.environ, "SHELL": shell}

    for host in ("peer-1", "100.64.0.7"):
        assert ssh_g(config, host, env=env)["proxycommand"] == f"{fake} ssh proxy %h %p"
    assert not probes.exists()  # no detect process for marked hosts

    assert "proxycommand" in ssh_g(config, "peer-2", env=env)  # no marker: detect decides
    assert "proxycommand" in ssh_g(config, "-p", "2222", "peer-1", env=env)  # marked for 22 only
    assert "proxycommand" in ssh_g(config, "PEER-1", env=env)  # %h keeps the user's spelling
    assert probes.read_text().splitlines() == [
        "ssh detect peer-2 22",
        "ssh detect peer-1 2222",
        "ssh detect PEER-1 22",
    ]


def test_markers_follow_the_map_and_only_for_peers_with_a_pinned_key(tmp_path: Path) -> None:
    directory = tmp_path / "ssh-servers"
    marks = ServerMarks(directory)

    def sync(serial: int, *peers: RemotePeer) -> bool:
        return marks.sync(make_map(serial, mesh_ip="127.0.0.3", remote_peers=list(peers)))

    assert sync(1, SERVER, KEYLESS)
    assert listing(directory) == {f"{port}/{host}" for port in (22, 22022) for host in NAMES}
    assert not sync(2, SERVER, KEYLESS)  # unchanged: nothing written
    assert directory.stat().st_mode & 0o777 == 0o755
    assert (directory / "22" / "demo-server").stat().st_mode & 0o777 == 0o644

    # A relay port the peer never reported (0: unknown) makes no marker.
    sync(3, msgspec.structs.replace(SERVER, relay_port=0))
    assert listing(directory) == {"22022/Demo-Server", "22022/demo-server", "22022/127.0.0.2"}
    # SSH off (its operator's switch, or its own --allow-server-ssh): no sshd, no marker.
    sync(4, msgspec.structs.replace(SERVER, ssh_enabled=False))
    assert listing(directory) == set()
    sync(5, SERVER)
    assert listing(directory)
    sync(6, KEYLESS)  # left the map
    assert listing(directory) == set()
    assert not marks.sync(None)  # the peer was removed: nothing left to remove


async def until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {timeout}s: {what}")


async def test_the_agent_keeps_markers_from_its_map_and_down_removes_them(
    nc: NATS, nats_url: str, nats_server: NatsServer, tmp_path: Path, services: ServiceFactory
) -> None:
    # The real meshssh-policy; the server registers as its own agent would, reporting the
    # ports its sshd and relay listen on.
    policy = await Management.start(services, nats_server, nc, tmp_path / "policy")
    await policy.register("demo-server", "127.0.0.2", key=SERVER_KEY, ssh_port=22022, relay_port=22)
    state = tmp_path / "state"
    agent = await AgentProcess.start(
        state,
        "--mesh-ip",
        "127.0.0.3",
        "--name",
        "laptop",
        "--nats-url",
        nats_url,
        "--management-url",
        policy.api,
        "--setup-key",
        LAPTOP_KEY,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
    )
    directory = state / "ssh-servers"
    everything = {f"{port}/{host}" for port in (22, 22022) for host in ("demo-server", "127.0.0.2")}
    try:
        await agent.wait_status(lambda s: s["registered"])
        dropin = Path(f"{state}.ssh_config")
        await until(
            lambda: dropin.exists() and str(directory) in dropin.read_text(),
            "the drop-in tests the marker directory",
        )
        await until(lambda: listing(directory) == everything, "markers for sshd and relay")
        await policy.patch_peer("demo-server", ssh_enabled=False)  # the operator's switch
        await until(lambda: listing(directory) == set(), "no markers while its SSH is off")
        await policy.patch_peer("demo-server", ssh_enabled=True)
        await until(lambda: listing(directory) == everything, "markers are back")
        proc = await asyncio.create_subprocess_exec(
            script("meshssh"),
            "down",
            "--state-dir",
            str(state),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert not directory.exists()
    finally:
        await agent.stop()
