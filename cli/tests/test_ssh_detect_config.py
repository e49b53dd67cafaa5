"""``meshssh ssh detect`` and ``meshssh config install|uninstall`` as OpenSSH and users run them."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from conftest import LOCAL_IP, PEER_IP, PEER_NAME, TOKEN, Mesh
from ssh_peer import PeerFeatures
from static_link import write_launcher, write_link

from meshssh_agent.dropin import dropin_enabled, sync_dropin
from meshssh_agent.peers import PeerEntry, find_peer
from meshssh_agent.server_marks import write_marks
from meshssh_agent.ssh_config import DropIn, install, render
from meshssh_common.wire.agent import SOCKET_NAME
from meshssh_testkit.process import run_command


async def run_launcher(
    launcher: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    result = await run_command(str(launcher), *args, env=env or {}, timeout=timeout)
    return result.returncode, result.out, result.err


async def detect(mesh: Mesh, host: str, port: int) -> int:
    rc, _, _ = await run_launcher(
        mesh.launcher, "ssh", "detect", "--state-dir", str(mesh.state_dir), host, str(port)
    )
    return rc


async def test_detect_says_yes_for_a_jwt_peer_by_name_or_address(mesh: Mesh) -> None:
    assert await detect(mesh, PEER_NAME, mesh.peer.port) == 0
    assert await detect(mesh, PEER_IP, mesh.peer.port) == 0
    assert mesh.peer.record.sources == [LOCAL_IP, LOCAL_IP]  # probed from the mesh address


@pytest.mark.parametrize("peer_features", [PeerFeatures(jwt=False)], indirect=True)
async def test_detect_says_yes_for_a_machine_identity_peer(mesh: Mesh) -> None:
    assert await detect(mesh, PEER_NAME, mesh.peer.port) == 0


async def test_detect_says_no_for_strangers_closed_ports_and_a_missing_agent(
    mesh: Mesh, tmp_path: Path
) -> None:
    assert await detect(mesh, "stranger", mesh.peer.port) == 2
    port = mesh.peer.port
    await mesh.peer.stop()
    assert await detect(mesh, PEER_NAME, port) == 2
    rc, _, _ = await run_launcher(
        mesh.launcher,
        "ssh",
        "detect",
        "--state-dir",
        str(tmp_path / "no-agent"),
        PEER_NAME,
        str(port),
    )
    assert rc == 2


async def test_detect_gives_up_on_a_silent_server_within_5_seconds(mesh: Mesh) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, PEER_IP, 0)
    try:
        started = time.monotonic()
        assert await detect(mesh, PEER_NAME, server.sockets[0].getsockname()[1]) == 2
        assert time.monotonic() - started < 9  # 5 s, plus a generous margin for a busy machine
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_config_install_writes_the_map_and_uninstall_removes_it(tmp_path: Path) -> None:
    launcher = write_launcher(tmp_path / "meshssh")
    state = tmp_path / "state"
    peers = [
        PeerEntry(PEER_NAME, PEER_IP, "ssh-ed25519 AAAA"),
        PeerEntry("keyless", "127.0.0.9", ""),
    ]
    write_link(state, peers, LOCAL_IP, TOKEN)
    dropin = tmp_path / "99-meshssh.conf"
    rc, _, err = await run_launcher(
        launcher, "config", "install", "--file", str(dropin), "--state-dir", str(state)
    )
    assert rc == 0, err
    text = dropin.read_text()
    assert (
        f'Match host "{PEER_IP},{PEER_NAME}" exec "test -f {state}/ssh-servers/%p/%h || '
        f'{launcher} ssh detect --state-dir {state} %h %p"' in text
    )
    assert f"ProxyCommand {launcher} ssh proxy --state-dir {state} %h %p" in text
    assert "keyless" not in text  # no pinned key: the proxy could not verify it
    rc, _, _ = await run_launcher(launcher, "config", "uninstall", "--file", str(dropin))
    assert rc == 0
    assert not dropin.exists()


async def test_the_opt_out_setting_stops_install(tmp_path: Path) -> None:
    launcher = write_launcher(tmp_path / "meshssh")
    write_link(tmp_path / "state", [], LOCAL_IP, TOKEN)
    dropin = tmp_path / "99-meshssh.conf"
    rc, _, err = await run_launcher(
        launcher,
        "config",
        "install",
        "--file",
        str(dropin),
        "--state-dir",
        str(tmp_path / "state"),
        env={"MESHSSH_DISABLE_SSH_CONFIG": "1"},
    )
    assert rc == 1
    assert "disabled by MESHSSH_DISABLE_SSH_CONFIG" in err
    assert not dropin.exists()


def test_the_agent_keeps_the_drop_in_current_and_removes_it_when_opted_out(tmp_path: Path) -> None:
    path = tmp_path / "drop.conf"
    one = [PeerEntry("a", "127.0.0.5", "ssh-ed25519 AAAA")]
    two = [*one, PeerEntry("b", "127.0.0.6", "ssh-ed25519 BBBB")]
    assert sync_dropin(one, path=path, executable="/usr/bin/meshssh", home=tmp_path)
    assert not sync_dropin(one, path=path, executable="/usr/bin/meshssh", home=tmp_path)
    assert sync_dropin(two, path=path, executable="/usr/bin/meshssh", home=tmp_path)
    assert "127.0.0.6" in path.read_text()
    assert sync_dropin(two, path=path, executable="/usr/bin/meshssh", enabled=False, home=tmp_path)
    assert not path.exists()
    assert dropin_enabled({})
    assert dropin_enabled({"MESHSSH_DISABLE_SSH_CONFIG": "0"})
    assert not dropin_enabled({"MESHSSH_DISABLE_SSH_CONFIG": "yes"})


@pytest.mark.parametrize(
    ("host", "found"),
    [
        ("demo-server", "demo-server"),
        ("DEMO-Server.", "demo-server"),
        ("127.0.0.2", "demo-server"),
        ("fd00::7", "v6"),
        ("[fd00:0::7]", "v6"),
        ("demo", None),
        ("127.0.0.22", None),
        ("", None),
    ],
)
def test_peers_are_found_by_name_or_any_spelling_of_their_address(
    host: str, found: str | None
) -> None:
    peers = [PeerEntry("demo-server", "127.0.0.2", "k"), PeerEntry("v6", "fd00::7", "k")]
    match = find_peer(peers, host)
    assert (match.name if match else None) == found


async def test_the_real_command_without_an_agent_says_so_and_detect_says_no(tmp_path: Path) -> None:
    meshssh = Path(sys.executable).parent / "meshssh"
    rc, _, _ = await run_launcher(
        meshssh, "ssh", "detect", "--state-dir", str(tmp_path), PEER_NAME, "22"
    )
    assert rc == 2
    rc, _, err = await run_launcher(meshssh, "ssh", "--state-dir", str(tmp_path), PEER_NAME, "true")
    assert rc == 255
    assert f"no meshssh agent socket at {tmp_path / SOCKET_NAME}" in err
    assert "Check that `meshssh up` is running for this --state-dir" in err


async def test_ssh_through_the_drop_in_uses_the_marker_and_starts_no_detect(
    mesh: Mesh, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    logging_launcher = tmp_path / "meshssh-logged"
    logging_launcher.write_text(f'#!/bin/sh\necho "$1 $2" >> {calls}\nexec {mesh.launcher} "$@"\n')
    logging_launcher.chmod(0o755)
    marks = mesh.state_dir / "ssh-servers"
    dropin = DropIn(str(logging_launcher), mesh.state_dir, marks)
    install(render([PEER_NAME, PEER_IP], dropin), mesh.dropin)

    result = await mesh.run("ssh", PEER_NAME, "echo via-proxy")  # no marker yet: detect runs
    assert result.returncode == 0, result.err
    assert calls.read_text().splitlines() == ["ssh detect", "ssh proxy"]

    write_marks(marks, [(mesh.peer.port, PEER_NAME)])
    calls.unlink()
    result = await mesh.run("ssh", PEER_NAME, "echo via-proxy")
    assert result.returncode == 0, result.err
    assert result.out == "via-proxy\n"
    assert calls.read_text().splitlines() == ["ssh proxy"]  # the marker answered for detect
