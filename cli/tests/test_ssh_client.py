"""``meshssh ssh`` itself, against a real peer: commands, terminal, forwards, failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import asyncssh
import pytest
from conftest import LOCAL_IP, PEER_IP, TOKEN, Mesh
from net_tools import (
    background,
    echo_server,
    echo_through,
    free_port,
    in_pty,
    read_line_matching,
    set_winsize,
)
from static_link import StaticLink, write_link

from meshssh_agent.peers import PeerEntry
from meshssh_cli.ssh.conn import dial
from meshssh_cli.ssh.errors import ClientError
from meshssh_common.host_keys import fingerprint


async def meshssh(
    mesh: Mesh,
    *args: str,
    input: bytes | None = None,
    stdin: int | None = None,
    timeout: float = 30,
) -> tuple[int, str, str]:
    """Run ``meshssh ssh --state-dir ... -p <peer port> <args>``."""
    proc = await asyncio.create_subprocess_exec(
        str(mesh.launcher),
        "ssh",
        "--state-dir",
        str(mesh.state_dir),
        "-p",
        str(mesh.peer.port),
        *args,
        stdin=stdin
        if stdin is not None
        else (asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate(input)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_command_runs_with_its_exit_status_and_separate_stderr(mesh: Mesh) -> None:
    rc, out, err = await meshssh(mesh, "demo-server", "cat; echo err >&2; exit 9", input=b"piped\n")
    assert (rc, out, err) == (9, "piped\n", "err\n")
    assert mesh.peer.record.sources == [LOCAL_IP]
    assert mesh.peer.record.passwords == [TOKEN]


async def test_command_words_are_joined_like_openssh_and_options_may_follow_the_host(
    mesh: Mesh,
) -> None:
    rc, out, err = await meshssh(mesh, "bob@demo-server", "-T", "echo", "a", "b")
    assert (rc, out) == (0, "a b\n"), err
    assert mesh.peer.record.users == ["bob"]


async def test_input_from_a_regular_file_is_sent_whole(mesh: Mesh, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    (tmp_path / "in.bin").write_bytes(data)
    with (tmp_path / "in.bin").open("rb") as f:
        rc, out, err = await meshssh(mesh, "demo-server", "wc -c", stdin=f.fileno())
    assert rc == 0, err
    assert out.strip() == str(len(data))


async def test_t_gives_a_terminal_that_follows_resizes(mesh: Mesh) -> None:
    remote = "stty size; trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.1; done"
    argv = [
        str(mesh.launcher),
        "ssh",
        "--state-dir",
        str(mesh.state_dir),
        "-p",
        str(mesh.peer.port),
        "-t",
        "demo-server",
        remote,
    ]
    async with in_pty(argv, rows=30, cols=90) as (proc, pty):
        await pty.wait_for("ready")
        assert "30 90" in pty.text
        set_winsize(pty.master, 50, 120)
        os.kill(proc.pid, signal.SIGWINCH)
        await pty.wait_for("50 120")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0


async def test_an_interactive_login_from_a_terminal_runs_in_raw_mode(mesh: Mesh) -> None:
    argv = [
        str(mesh.launcher),
        "ssh",
        "--state-dir",
        str(mesh.state_dir),
        "-p",
        str(mesh.peer.port),
        "demo-server",
    ]
    async with in_pty(argv) as (proc, pty):
        # raw mode: the remote terminal echoes and answers; Ctrl-C goes to the remote shell
        os.write(pty.master, b"sleep 30\r")
        await pty.wait_for("sleep 30")
        os.write(pty.master, b"\x03")
        os.write(pty.master, b"echo product=$((6 * 7))\r")
        await pty.wait_for("product=42")
        os.write(pty.master, b"exit 3\r")
        async with asyncio.timeout(15):
            assert await proc.wait() == 3


async def test_local_forward_reaches_a_service_beside_the_peer(mesh: Mesh) -> None:
    async with echo_server() as echo:
        local = free_port()
        argv = [
            str(mesh.launcher),
            "ssh",
            "--state-dir",
            str(mesh.state_dir),
            "-p",
            str(mesh.peer.port),
            "-N",
            "-L",
            f"{local}:127.0.0.1:{echo}",
            "demo-server",
        ]
        async with background(argv):
            assert await echo_through("127.0.0.1", local, b"direct -L") == b"DIRECT -L"


async def test_remote_forward_on_port_0_reports_the_allocated_port(mesh: Mesh) -> None:
    async with echo_server() as echo:
        argv = [
            str(mesh.launcher),
            "ssh",
            "--state-dir",
            str(mesh.state_dir),
            "-p",
            str(mesh.peer.port),
            "-N",
            "-R",
            f"0:127.0.0.1:{echo}",
            "demo-server",
        ]
        async with background(argv) as proc:
            assert proc.stderr is not None
            port = int(await read_line_matching(proc.stderr, r"Allocated port (\d+)", 20))
            assert await echo_through("127.0.0.1", port, b"direct -R") == b"DIRECT -R"


async def test_a_local_port_in_use_says_cannot_bind(mesh: Mesh) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = await meshssh(mesh, "-N", "-L", f"127.0.0.1:{port}:127.0.0.1:9", "demo-server")
    assert rc == 255
    assert f"Cannot bind to port: {port} on 127.0.0.1" in err


async def test_a_wrong_pinned_key_fails_before_any_token_is_sent(mesh: Mesh) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    mesh.relink(host_key_line=impostor)
    rc, _, err = await meshssh(mesh, "demo-server", "true")
    assert rc == 255
    assert "Host key verification failed" in err
    assert fingerprint(mesh.peer.host_key_line) in err
    assert fingerprint(impostor) in err
    assert mesh.peer.record.passwords == []


async def test_an_unknown_host_is_not_detected(mesh: Mesh) -> None:
    rc, _, err = await meshssh(mesh, "nobody-here", "true")
    assert rc == 255
    assert "SSH server not detected: nobody-here" in err


@pytest.mark.parametrize(
    "argv", [["-p"], ["-p", "0", "h"], ["-x", "h"], ["-L", "8080", "h"], [], ["-N", "h", "cmd"]]
)
async def test_bad_command_lines_exit_2_with_usage(mesh: Mesh, argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(mesh.launcher),
        "ssh",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"usage: meshssh ssh" in err


async def test_a_server_that_never_answers_is_a_connection_timeout(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, PEER_IP, 0)
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    peer = PeerEntry("quiet-peer", PEER_IP, key)
    write_link(tmp_path, [peer], LOCAL_IP, TOKEN)
    try:
        with pytest.raises(ClientError) as caught:
            await dial(
                peer,
                server.sockets[0].getsockname()[1],
                "alice",
                StaticLink(tmp_path),
                source=LOCAL_IP,
                timeout=0.5,
            )
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert caught.value.headline == "Connection timeout"
    assert "Check that the peer is online" in caught.value.render()


async def test_a_server_without_the_meshssh_banner_never_gets_the_token(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    passwords: list[str] = []

    class PlainServer(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            passwords.append(password)
            return True

    server = await asyncssh.listen(
        PEER_IP, 0, server_factory=PlainServer, server_host_keys=[key], server_version="OpenSSH_9"
    )
    peer = PeerEntry("plain-peer", PEER_IP, key.export_public_key().decode())
    write_link(tmp_path, [peer], LOCAL_IP, TOKEN)
    try:
        with pytest.raises(ClientError) as caught:
            await dial(
                peer,
                server.sockets[0].getsockname()[1],
                "alice",
                StaticLink(tmp_path),
                source=LOCAL_IP,
                timeout=10,
            )
    finally:
        server.close()
        await server.wait_closed()
    assert caught.value.headline == "Permission denied (publickey)"
    assert passwords == []


async def test_without_an_agent_the_idp_token_is_sent_and_a_refusal_names_accept_idp_tokens(
    mesh: Mesh,
) -> None:
    mesh.relink(token="another-idp-token", cached_token="another-idp-token")
    with pytest.raises(ClientError) as caught:
        await dial(
            mesh.entry(),
            mesh.peer.port,
            "alice",
            StaticLink(mesh.state_dir),
            source=LOCAL_IP,
            timeout=10,
        )
    assert caught.value.headline == "Permission denied"
    assert "no agent here to exchange it" in caught.value.render()
    assert "--accept-idp-tokens" in caught.value.render()
    assert mesh.peer.record.passwords == ["another-idp-token"]
