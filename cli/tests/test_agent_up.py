"""``meshssh up`` as users type it: daemonized, registered once with the setup key and then
with the stored credential, flags reported as metadata, refusals reported. The management
plane is the real meshssh-policy: what reached it is read back through its API."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from meshssh_cli.commands.status import format_status
from meshssh_common.wire.agent import AgentStatus, PeerStatus
from meshssh_testkit.management import SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import agent_request, pid_alive
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import run_command, script


@pytest.fixture
async def policy(
    services: ServiceFactory, nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> Management:
    return await Management.start(services, nats_server, nc, tmp_path / "policy")


async def meshssh(*args: str) -> tuple[int, str, str]:
    result = await run_command(script("meshssh"), *args, timeout=60)
    return result.returncode, result.out, result.err


def up_args(
    state: Path, policy: Management, nats_url: str, sshd_bin: str, *flags: str
) -> list[str]:
    return [
        "up",
        "--state-dir",
        str(state),
        "--mesh-ip",
        "127.0.0.2",
        "--name",
        "server",
        "--nats-url",
        nats_url,
        "--management-url",
        policy.api,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--sshd-bin",
        sshd_bin,
        "--ssh-config-file",
        f"{state}.ssh_config",
        *flags,
    ]


async def test_up_daemonizes_registers_once_with_the_key_then_with_its_credential(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    state = tmp_path / "state"
    sshd_bin = script("meshssh-sshd")
    try:
        code, out, err = await meshssh(
            *up_args(state, policy, nats_url, sshd_bin, "--setup-key", SERVER_KEY)
        )
        assert code == 0, err
        status = (await agent_request(state, {"op": "status"}))["status"]
        assert f"server is up as {status['peer_id']}" in out
        assert status["registered"]
        peer = await policy.peer("server")  # registered with the setup key
        assert peer["id"] == status["peer_id"]
        assert (state / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
        assert peer["ssh_host_key"].startswith("ssh-ed25519 ")

        # A flag change on a running agent is reported to management as metadata.
        code, _, err = await meshssh(
            *up_args(
                state,
                policy,
                nats_url,
                sshd_bin,
                "--enable-ssh-sftp",
                "--enable-ssh-agent-forwarding",
            )
        )
        assert code == 0, err
        assert "flags updated" in err
        peer = await policy.peer("server")
        assert peer["flags"]["sftp"]
        assert peer["flags"]["agent_forwarding"]
        assert peer["capabilities"] == ["native_ssh"]

        code, text, err = await meshssh("status", "-d", "--state-dir", str(state))
        assert code == 0, err
        assert "Relay:" in text
        assert "sftp" in text
        assert "agent-forwarding" in text

        code, _, err = await meshssh("down", "--state-dir", str(state))
        assert code == 0, err
        assert not pid_alive(status["pid"])

        # Again, without the setup key: the stored credential logs the peer in.
        code, _, err = await meshssh(*up_args(state, policy, nats_url, sshd_bin))
        assert code == 0, err
        again = (await agent_request(state, {"op": "status"}))["status"]
        assert again["registered"]
        assert again["peer_id"] == status["peer_id"]  # the same peer, not a second one
        assert [p["id"] for p in await policy.call("GET", "/peers")] == [status["peer_id"]]
    finally:
        await meshssh("down", "--state-dir", str(state))


async def test_a_refused_setup_key_is_reported_and_nothing_keeps_running(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    state = tmp_path / "state"
    code, _, err = await meshssh(
        *up_args(state, policy, nats_url, script("meshssh-sshd"), "--setup-key", "WRONG")
    )
    assert code == 1
    assert "registration refused: setup key not recognised" in err
    code, _, err = await meshssh("status", "--state-dir", str(state))
    assert code == 1
    assert "no agent is running" in err


async def test_up_without_a_setup_key_the_first_time_says_which_flag_is_missing(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    code, _, err = await meshssh(
        *up_args(tmp_path / "state", policy, nats_url, script("meshssh-sshd"))
    )
    assert code == 2, err
    assert "--setup-key" in err


async def test_up_warns_when_a_child_cannot_start_and_says_why(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    state = tmp_path / "state"
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen(1)
    args = up_args(
        state,
        policy,
        nats_url,
        script("meshssh-sshd"),
        "--setup-key",
        SERVER_KEY,
        "--allow-server-ssh",
    )
    args[args.index("--relay-port") + 1] = str(taken.getsockname()[1])
    try:
        code, _, err = await meshssh(*args)
        assert code == 0, err  # registered: the agent runs and keeps retrying the relay
        assert "relay keeps failing" in err
        assert "address in use" in err
    finally:
        await meshssh("down", "--state-dir", str(state))
        taken.close()


def test_status_shows_registration_progress_and_only_what_the_map_says_of_peers() -> None:
    registering = AgentStatus(
        pid=1,
        version="0",
        state_dir="/s",
        name="laptop",
        mesh_ip="127.0.0.3",
        nats_url="nats://127.0.0.1:4222",
        register_error="management plane not answering (503); retrying",
    )
    text = format_status(registering, detail=False)
    assert "registering: management plane not answering (503); retrying; bus not yet" in text
    peers = (
        PeerStatus(id="p2", name="demo-server", mesh_ip="127.0.0.2", ssh_enabled=True),
        PeerStatus(id="p3", name="db", mesh_ip="127.0.0.4", online=False),
    )
    up = msgspec.structs.replace(registering, registered=True, register_error="", peers=peers)
    lines = format_status(up, detail=True).splitlines()
    server = next(line for line in lines if "demo-server" in line)
    assert server.split()[-2:] == ["ssh", "on"]  # nobody here knows whether it is up: unsaid
    assert next(line for line in lines if " db " in line).split()[-3:] == ["ssh", "off", "offline"]
