"""What users see when the proxy cannot do what OpenSSH asked: host key, login, features.

Every failure must say what failed in the words users search for (SPEC §9) and what to check.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest
from conftest import TOKEN, Mesh
from net_tools import background, echo_server, echo_through, free_port
from ssh_peer import PeerFeatures
from static_link import issued

from meshssh_common.host_keys import fingerprint
from meshssh_testkit.openssh import RunResult


async def test_a_wrong_pinned_host_key_fails_showing_both_fingerprints(mesh: Mesh) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    mesh.relink(host_key_line=impostor)
    result = await mesh.run("ssh", "demo-server", "true")
    assert result.returncode == 255
    assert "Host key verification failed" in result.err
    assert fingerprint(mesh.peer.host_key_line) in result.err  # what the peer presented
    assert fingerprint(impostor) in result.err  # what the map pinned
    assert mesh.peer.record.passwords == []  # no token went to the wrong key
    assert issued(mesh.state_dir) == []


async def test_a_refused_cached_token_is_final_no_browser_check_follows(mesh: Mesh) -> None:
    # This stand-in peer gives no reason (meshssh-sshd does: test_refusals_real_sshd.py).
    mesh.relink(token=TOKEN, cached_token="stale-token")
    result = await mesh.run("ssh", "demo-server", "true")
    assert result.returncode == 255
    assert "Permission denied: root@demo-server" in result.err
    assert "Check that a policy authorizes your identity" in result.err
    assert mesh.peer.record.passwords == ["stale-token"]
    assert issued(mesh.state_dir) == ["cached:stale-token"]  # no fresh token, no device flow


async def test_a_fresh_token_that_is_refused_is_not_retried(mesh: Mesh) -> None:
    mesh.relink(token="not-authorized", cached_token="")  # empty cache: one device flow
    result = await mesh.run("ssh", "demo-server", "true")
    assert result.returncode == 255
    assert "Permission denied" in result.err
    assert issued(mesh.state_dir) == ["fresh:not-authorized"]  # no second browser flow
    assert mesh.peer.record.passwords == ["not-authorized"]


@pytest.mark.parametrize("peer_features", [PeerFeatures(jwt=False)], indirect=True)
async def test_a_machine_identity_peer_is_reached_without_any_token(mesh: Mesh) -> None:
    result = await mesh.run("ssh", "demo-server", "echo machine")
    assert result.returncode == 0, result.err
    assert result.out == "machine\n"
    assert issued(mesh.state_dir) == []
    assert mesh.peer.record.passwords == []


@pytest.mark.parametrize("peer_features", [PeerFeatures(sftp=False)], indirect=True)
async def test_sftp_and_scp_to_a_peer_without_sftp_say_so(mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    scp = await mesh.run("scp", str(tmp_path / "f.txt"), f"demo-server:{tmp_path}/g.txt")
    assert scp.returncode != 0
    assert "SFTP subsystem not available: demo-server refused the sftp subsystem" in scp.err
    assert "--enable-ssh-sftp" in scp.err
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    sftp = await mesh.run("sftp", "-b", str(batch), "demo-server")
    assert sftp.returncode != 0
    assert "SFTP subsystem not available" in sftp.err


@pytest.mark.parametrize("peer_features", [PeerFeatures(local_forwarding=False)], indirect=True)
async def test_local_forwarding_refused_by_the_peer_says_port_forwarding_not_available(
    mesh: Mesh,
) -> None:
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
        async with background(argv) as proc:
            assert await echo_through("127.0.0.1", local, b"refused") == b""
            proc.kill()  # the proxy then sees EOF on stdin and exits, closing stderr
            assert proc.stderr is not None
            async with asyncio.timeout(10):
                err = (await proc.stderr.read()).decode()
    assert "Port forwarding not available: demo-server refused forwarding" in err
    assert "--enable-ssh-local-port-forwarding" in err


@pytest.mark.parametrize("peer_features", [PeerFeatures(remote_forwarding=False)], indirect=True)
async def test_remote_forwarding_refused_by_the_peer_says_cannot_bind(mesh: Mesh) -> None:
    result = await mesh.run(
        "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "demo-server"
    )
    assert result.returncode == 255
    assert "Cannot bind to port: 0 on demo-server" in result.err
    assert "--enable-ssh-remote-port-forwarding" in result.err


async def _ssh_via_proxy(mesh: Mesh, host: str, port: int) -> RunResult:
    """OpenSSH with the ProxyCommand set directly (no drop-in, so no detect probe first)."""
    proxy = f"{mesh.launcher} ssh proxy --state-dir {mesh.state_dir} %h %p"
    options = [
        "-F",
        "/dev/null",
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
    ]
    return await mesh.openssh.run("ssh", host, "true", options=options)


async def test_a_peer_that_is_down_is_reported_as_not_detected(mesh: Mesh) -> None:
    port = mesh.peer.port
    await mesh.peer.stop()
    result = await _ssh_via_proxy(mesh, "demo-server", port)
    assert result.returncode == 255
    assert "SSH server not detected: demo-server: connection refused on 127.0.0.2" in result.err
    assert "Check the peer name (meshssh status)" in result.err


async def test_a_host_missing_from_the_map_is_not_detected(mesh: Mesh) -> None:
    result = await _ssh_via_proxy(mesh, "stranger", mesh.peer.port)
    assert result.returncode == 255
    assert "SSH server not detected: stranger: not a peer in this peer's network map" in result.err
    assert mesh.peer.record.sources == []  # nothing was dialled


async def test_a_connection_the_peer_closes_ends_ssh_with_a_message(mesh: Mesh) -> None:
    running = asyncio.create_task(mesh.run("ssh", "demo-server", "echo started; sleep 30"))
    async with asyncio.timeout(15):
        while len(mesh.peer.record.conns) < 2:  # the detect probe, then the proxy
            await asyncio.sleep(0.05)
        while not mesh.peer.record.env:  # the session's command has started
            await asyncio.sleep(0.05)
    mesh.peer.record.conns[-1].disconnect(asyncssh.DISC_PROTOCOL_ERROR, "access revoked")
    result = await asyncio.wait_for(running, 15)
    assert result.returncode == 255
    # the reason is the peer's ("access revoked") unless the proxy's next write hit the
    # closed socket first ("Broken pipe"); either way the user learns who closed it
    assert "Connection closed: demo-server closed the connection:" in result.err
    assert "Check whether your access was revoked" in result.err
