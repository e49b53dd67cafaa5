"""What users see when the proxy cannot do what OpenSSH asked: host key, login, features.

Every failure must say what failed in the words users search for (SPEC §9) and what to check.
``agent_mesh`` is the real system (agents, policy, authn); ``mesh`` is meshssh-sshd with the
static link, for the tests that must hand the client a fixed token or key (each says why).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest
from agent_mesh import AgentMesh
from conftest import LOCAL_IP, Mesh
from mesh_sshd import PeerFeatures, audit_events, kinds, logins
from net_tools import background, echo_server, echo_through, free_port
from static_link import issued

from meshssh_common.host_keys import fingerprint
from meshssh_common.wire import AuditEvent
from meshssh_testkit.openssh import RunResult


async def logins_then_a_good_one(mesh: Mesh | AgentMesh) -> list[AuditEvent]:
    """The logins the peer saw, up to a last good one this adds (so none can still be on its
    way): what earlier runs showed the peer."""
    if not isinstance(mesh, AgentMesh):
        mesh.relink()  # the static link's good token and the peer's real key
    check = await mesh.run("ssh", "demo-server", "true")
    assert check.returncode == 0, check.err
    events = logins(await audit_events(mesh.peer.nc, kinds("auth-accepted")))
    assert events[-1].kind == "auth-accepted"
    return events[:-1]


async def test_a_wrong_pinned_host_key_fails_showing_both_fingerprints(mesh: Mesh) -> None:
    # static link: the real agent pins the key the map gives, never a wrong one
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    mesh.relink(host_key_line=impostor)
    result = await mesh.run("ssh", "demo-server", "true")
    assert result.returncode == 255
    assert "Host key verification failed" in result.err
    assert fingerprint(mesh.peer.host_key_line) in result.err  # what the peer presented
    assert fingerprint(impostor) in result.err  # what the map pinned
    assert issued(mesh.state_dir) == []
    assert await logins_then_a_good_one(mesh) == []  # no token went to the wrong key


async def test_a_refused_cached_token_is_final_no_browser_check_follows(mesh: Mesh) -> None:
    # static link: the real agent's cache never hands out an expired token, nor counts them
    stale = mesh.peer.issuer.mint("alice-id", age=400, ttl=300)
    mesh.relink(cached_token=stale)
    result = await mesh.run("ssh", "demo-server", "true")
    assert result.returncode == 255
    assert "Permission denied: root@demo-server" in result.err
    assert "your login token has expired" in result.err
    # dropped from the cache, but no fresh token, so no device flow on this run
    assert issued(mesh.state_dir) == [f"cached:{stale}", "forgotten"]
    (refused,) = await logins_then_a_good_one(mesh)
    assert (refused.kind, refused.reason) == ("auth-rejected", "expired")


async def test_a_fresh_token_that_is_refused_is_not_retried(mesh: Mesh) -> None:
    # static link: a signed-in user the policy refuses, and a count of the device flows run
    mallory = mesh.peer.issuer.mint("mallory-id")  # a valid token the policy does not grant
    mesh.relink(token=mallory, cached_token="")  # empty cache: one device flow
    result = await mesh.run("ssh", "demo-server", "true")
    assert result.returncode == 255
    assert "Permission denied" in result.err
    assert "you are not authorized to log in as" in result.err
    assert issued(mesh.state_dir) == [f"fresh:{mallory}"]  # no second browser flow
    (refused,) = await logins_then_a_good_one(mesh)
    assert (refused.kind, refused.jwt_user) == ("auth-rejected", "mallory-id")


@pytest.mark.parametrize("peer_features", [PeerFeatures(jwt=False)], indirect=True)
async def test_a_machine_identity_peer_is_reached_without_any_token(agent_mesh: AgentMesh) -> None:
    mesh = agent_mesh
    result = await mesh.run("ssh", "demo-server", "echo machine")
    assert result.returncode == 0, result.err
    assert result.out == "machine\n"
    accepted = await audit_events(mesh.peer.nc, kinds("auth-accepted"))
    assert [(e.method, e.source_addr.split(":")[0]) for e in logins(accepted)] == [
        ("none", LOCAL_IP)
    ]


@pytest.mark.parametrize("peer_features", [PeerFeatures(sftp=False)], indirect=True)
async def test_sftp_and_scp_to_a_peer_without_sftp_say_so(
    agent_mesh: AgentMesh, tmp_path: Path
) -> None:
    mesh = agent_mesh
    (tmp_path / "f.txt").write_text("x")
    scp = await mesh.run("scp", str(tmp_path / "f.txt"), f"demo-server:{tmp_path}/g.txt")
    assert scp.returncode != 0
    assert "SFTP subsystem not available: SFTP is off on this peer" in scp.err
    assert "--enable-ssh-sftp" in scp.err
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    sftp = await mesh.run("sftp", "-b", str(batch), "demo-server")
    assert sftp.returncode != 0
    assert "SFTP subsystem not available" in sftp.err


@pytest.mark.parametrize("peer_features", [PeerFeatures(local_forwarding=False)], indirect=True)
async def test_local_forwarding_refused_by_the_peer_says_port_forwarding_not_available(
    agent_mesh: AgentMesh,
) -> None:
    mesh = agent_mesh
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
async def test_remote_forwarding_refused_by_the_peer_says_cannot_bind(
    agent_mesh: AgentMesh,
) -> None:
    mesh = agent_mesh
    result = await mesh.run(
        "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "demo-server"
    )
    assert result.returncode == 255
    assert "Cannot bind to port: 0 on demo-server" in result.err
    assert "--enable-ssh-remote-port-forwarding" in result.err


async def _ssh_via_proxy(mesh: AgentMesh, host: str, port: int) -> RunResult:
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


async def test_a_peer_that_is_down_is_reported_as_not_detected(agent_mesh: AgentMesh) -> None:
    mesh = agent_mesh
    port = mesh.peer.port
    await mesh.server.stop()  # its agent, and so its sshd
    result = await _ssh_via_proxy(mesh, "demo-server", port)
    assert result.returncode == 255
    assert "SSH server not detected: demo-server: connection refused on 127.0.0.2" in result.err
    assert "Check the peer name (meshssh status)" in result.err


async def test_a_host_missing_from_the_map_is_not_detected(agent_mesh: AgentMesh) -> None:
    mesh = agent_mesh
    result = await _ssh_via_proxy(mesh, "stranger", mesh.peer.port)
    assert result.returncode == 255
    assert "SSH server not detected: stranger: not a peer in this peer's network map" in result.err
    assert await logins_then_a_good_one(mesh) == []  # nothing was dialled


async def test_a_connection_the_peer_closes_ends_ssh_with_a_message(agent_mesh: AgentMesh) -> None:
    mesh = agent_mesh
    running = asyncio.create_task(mesh.run("ssh", "demo-server", "echo started; sleep 30"))
    await audit_events(mesh.peer.nc, kinds("session-start"), timeout=15)
    await mesh.peer.revoke()  # the dashboard switch: the new map ends the live session
    result = await asyncio.wait_for(running, 15)
    assert result.returncode == 255
    assert "Connection closed: demo-server closed the connection" in result.err
    assert "Check whether your access was revoked" in result.err
