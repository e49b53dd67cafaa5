"""Real OpenSSH (ssh, scp, sftp) through the generated drop-in and ``meshssh ssh proxy``.

Each test runs the tools with ``-F <config>``, a config that only sets the port and includes
the drop-in, so OpenSSH's own Match/ProxyCommand logic picks the proxy. The remote peer is a
real SSH server (``ssh_peer``); the agent is stood in for by ``static_link``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
from pathlib import Path

import socks
from conftest import LOCAL_IP, TOKEN, Mesh
from net_tools import (
    background,
    echo_server,
    echo_through,
    free_port,
    in_pty,
    read_line_matching,
    set_winsize,
)

from meshssh_common.host_keys import fingerprint


async def test_ssh_runs_a_command_and_returns_its_exit_status(mesh: Mesh) -> None:
    result = await mesh.run("ssh", "demo-server", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7, result.err
    assert result.out == "out\n"
    assert result.err == "err\n"


async def test_the_peer_sees_this_peers_mesh_address_and_the_token_as_password(mesh: Mesh) -> None:
    result = await mesh.run("ssh", "alice@127.0.0.2", "true")
    assert result.returncode == 0, result.err
    # the drop-in's detect probe and the proxy's connection, both from the mesh address
    assert mesh.peer.record.sources == [LOCAL_IP, LOCAL_IP]
    assert mesh.peer.record.users == ["alice"]
    assert mesh.peer.record.passwords == [TOKEN]


async def test_plain_ssh_without_a_terminal_runs_a_shell_on_stdin(mesh: Mesh) -> None:
    result = await mesh.run("ssh", "demo-server", input=b"echo $((6 * 7))\nexit 5\n")
    assert result.returncode == 5, result.err
    assert "42" in result.out


async def test_plain_ssh_from_a_terminal_gets_an_interactive_shell(mesh: Mesh) -> None:
    async with in_pty(["ssh", "-F", str(mesh.config), "demo-server"]) as (proc, pty):
        os.write(pty.master, b"echo sum=$((20 + 22))\r")
        await pty.wait_for("sum=42")
        os.write(pty.master, b"exit 6\r")
        async with asyncio.timeout(15):
            assert await proc.wait() == 6


async def test_environment_requests_reach_the_remote_command(mesh: Mesh) -> None:
    result = await mesh.run(
        "ssh", "-o", "SetEnv=LC_MESHTEST=hello", "demo-server", "echo $LC_MESHTEST"
    )
    assert result.returncode == 0, result.err
    assert result.out == "hello\n"


async def test_a_remote_command_killed_by_a_signal_fails_the_ssh_run(mesh: Mesh) -> None:
    result = await mesh.run("ssh", "demo-server", "kill -TERM $$")
    assert result.returncode == 255


async def test_ssh_tt_relays_the_terminal_size_and_its_changes(mesh: Mesh) -> None:
    remote = "stty size; trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.1; done"
    argv = ["ssh", "-F", str(mesh.config), "-tt", "demo-server", remote]
    async with in_pty(argv, rows=24, cols=80) as (proc, pty):
        await pty.wait_for("ready")
        assert "24 80" in pty.text
        set_winsize(pty.master, 40, 100)
        os.kill(proc.pid, signal.SIGWINCH)
        await pty.wait_for("40 100")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0


async def test_scp_copies_files_both_ways(mesh: Mesh, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "up.bin").write_bytes(data)
    remote = tmp_path / "remote"
    remote.mkdir()
    up = await mesh.run("scp", str(tmp_path / "up.bin"), f"demo-server:{remote}/copy.bin")
    assert up.returncode == 0, up.err
    assert (
        hashlib.sha256((remote / "copy.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    )
    down = await mesh.run("scp", f"demo-server:{remote}/copy.bin", str(tmp_path / "down.bin"))
    assert down.returncode == 0, down.err
    assert (tmp_path / "down.bin").read_bytes() == data


async def test_scp_r_copies_a_tree(mesh: Mesh, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    result = await mesh.run("scp", "-r", str(tree), f"demo-server:{dest}")
    assert result.returncode == 0, result.err
    assert (dest / "tree" / "a.txt").read_text() == "alpha\n"
    assert (dest / "tree" / "sub" / "b.txt").read_text() == "beta\n"


async def test_legacy_scp_protocol_works_too(mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "legacy.txt").write_text("legacy\n")
    result = await mesh.run(
        "scp", "-O", str(tmp_path / "legacy.txt"), f"demo-server:{tmp_path}/l2.txt"
    )
    assert result.returncode == 0, result.err
    assert (tmp_path / "l2.txt").read_text() == "legacy\n"


async def test_sftp_puts_lists_and_gets(mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("sftp data\n")
    work = tmp_path / "work"
    work.mkdir()
    batch = tmp_path / "batch"
    batch.write_text(
        f"cd {work}\nmkdir d\nput {tmp_path / 'in.txt'} d/in.txt\nls d\n"
        f"get d/in.txt {tmp_path / 'back.txt'}\nrename d/in.txt d/renamed.txt\n"
    )
    result = await mesh.run("sftp", "-b", str(batch), "demo-server")
    assert result.returncode == 0, result.err
    assert "d/in.txt" in result.out
    assert (tmp_path / "back.txt").read_text() == "sftp data\n"
    assert (work / "d" / "renamed.txt").read_text() == "sftp data\n"


async def test_local_forwarding_reaches_a_service_beside_the_peer(mesh: Mesh) -> None:
    async with echo_server() as echo:
        local = free_port()
        argv = [
            "ssh",
            "-F",
            str(mesh.config),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:{echo}",
            "demo-server",
        ]
        async with background(argv):
            assert await echo_through("127.0.0.1", local, b"through -L") == b"THROUGH -L"
            assert await echo_through("127.0.0.1", local, b"again") == b"AGAIN"


async def test_remote_forwarding_with_port_0_reaches_a_service_beside_the_client(
    mesh: Mesh,
) -> None:
    async with echo_server() as echo:
        argv = [
            "ssh",
            "-F",
            str(mesh.config),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=INFO",
            "-R",
            f"0:127.0.0.1:{echo}",
            "demo-server",
        ]
        async with background(argv) as proc:
            assert proc.stderr is not None
            port = int(await read_line_matching(proc.stderr, r"Allocated port (\d+)", 20))
            assert await echo_through("127.0.0.1", port, b"through -R") == b"THROUGH -R"


async def test_dynamic_forwarding_serves_a_socks_client(mesh: Mesh) -> None:
    async with echo_server() as echo:
        local = free_port()
        argv = [
            "ssh",
            "-F",
            str(mesh.config),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-D",
            f"127.0.0.1:{local}",
            "demo-server",
        ]
        async with background(argv):
            await echo_through("127.0.0.1", local, b"")  # wait for the SOCKS port

            def socks_roundtrip() -> bytes:
                s = socks.socksocket()
                s.settimeout(10)
                s.set_proxy(socks.SOCKS5, "127.0.0.1", local)
                try:
                    s.connect(("127.0.0.1", echo))
                    s.sendall(b"through -D")
                    s.shutdown(1)
                    return s.recv(100)
                finally:
                    s.close()

            assert await asyncio.to_thread(socks_roundtrip) == b"THROUGH -D"


async def test_agent_forwarding_lists_the_local_agents_keys_remotely(
    mesh: Mesh, tmp_path: Path
) -> None:
    sock = tmp_path / "agent.sock"
    started = await asyncio.create_subprocess_exec(
        "ssh-agent", "-s", "-a", str(sock), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await started.communicate()
    agent_pid = int(re.search(rb"SSH_AGENT_PID=(\d+)", out).group(1))  # type: ignore[union-attr]
    try:
        env = {"SSH_AUTH_SOCK": str(sock)}
        added = await asyncio.create_subprocess_exec(
            "ssh-add",
            str(mesh.openssh.key_path),
            env={**os.environ, **env},
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await added.wait() == 0
        forwarded = await mesh.run("ssh", "-A", "demo-server", "ssh-add -l", env=env)
        assert forwarded.returncode == 0, forwarded.err
        assert fingerprint(mesh.openssh.public_key) in forwarded.out
        plain = await mesh.run("ssh", "-a", "demo-server", "echo ${SSH_AUTH_SOCK:-none}", env=env)
        assert plain.out == "none\n"
    finally:
        os.kill(agent_pid, signal.SIGTERM)
