"""``meshssh up`` as users type it: daemonized, registered once with the setup key and then
with the stored credential, flags reported as metadata, refusals reported."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_testkit.netmaps import make_map
from meshssh_testkit.peer_agent import agent_request, pid_alive
from meshssh_testkit.policy_standin import PolicyStandIn
from meshssh_testkit.process import script


@pytest.fixture
async def policy(nc: NATS) -> AsyncIterator[PolicyStandIn]:
    standin = await PolicyStandIn.start(nc, netmap=make_map(1))
    try:
        yield standin
    finally:
        await standin.stop()


async def meshssh(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        script("meshssh"), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def up_args(state: Path, nats_url: str, sshd_bin: str, *flags: str) -> list[str]:
    return [
        "up", "--state-dir", str(state), "--mesh-ip", "127.0.0.2", "--name", "server",
        "--nats-url", nats_url, "--ssh-port", "0", "--relay-port", "0",
        "--relay-mode", "proxy", "--sshd-bin", sshd_bin,
        "--ssh-config-file", f"{state}.ssh_config", *flags,
    ]  # fmt: skip


async def test_up_daemonizes_registers_once_with_the_key_then_with_its_credential(
    tmp_path: Path, nats_url: str, policy: PolicyStandIn
) -> None:
    state = tmp_path / "state"
    sshd_bin = script("meshssh-sshd")
    try:
        code, out, err = await meshssh(*up_args(state, nats_url, sshd_bin, "--setup-key", "KEY"))
        assert code == 0, err
        assert "server is up as p1" in out
        status = (await agent_request(state, {"op": "status"}))["status"]
        assert status["registered"]
        assert policy.registers[0].setup_key == "KEY"
        assert (state / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
        assert policy.registers[0].ssh_host_key.startswith("ssh-ed25519 ")

        # A flag change on a running agent is reported to management as metadata.
        code, _, err = await meshssh(*up_args(state, nats_url, sshd_bin, "--enable-ssh-sftp",
                                              "--enable-ssh-agent-forwarding"))  # fmt: skip
        assert code == 0, err
        assert "flags updated" in err
        assert policy.metas[-1].meta.flags.sftp
        assert policy.metas[-1].meta.flags.agent_forwarding
        assert policy.metas[-1].meta.capabilities == ("native_ssh",)

        code, text, err = await meshssh("status", "-d", "--state-dir", str(state))
        assert code == 0, err
        assert "Relay:" in text
        assert "sftp" in text
        assert "agent-forwarding" in text

        code, _, err = await meshssh("down", "--state-dir", str(state))
        assert code == 0, err
        assert not pid_alive(status["pid"])

        # Again, without the setup key: the stored credential logs the peer in.
        code, _, err = await meshssh(*up_args(state, nats_url, sshd_bin))
        assert code == 0, err
        assert policy.registers[-1].setup_key == ""
        assert policy.registers[-1].peer_id == "p1"
        assert policy.registers[-1].credential == policy.credential
    finally:
        await meshssh("down", "--state-dir", str(state))


async def test_a_refused_setup_key_is_reported_and_nothing_keeps_running(
    tmp_path: Path, nats_url: str, policy: PolicyStandIn
) -> None:
    state = tmp_path / "state"
    code, _, err = await meshssh(
        *up_args(state, nats_url, script("meshssh-sshd"), "--setup-key", "WRONG")
    )
    assert code == 1
    assert "invalid setup key" in err
    code, _, err = await meshssh("status", "--state-dir", str(state))
    assert code == 1
    assert "no agent is running" in err


async def test_up_without_a_setup_key_the_first_time_says_which_flag_is_missing(
    tmp_path: Path, nats_url: str, policy: PolicyStandIn
) -> None:
    code, _, err = await meshssh(*up_args(tmp_path / "state", nats_url, script("meshssh-sshd")))
    assert code == 2, err
    assert "--setup-key" in err


async def test_up_warns_when_a_child_cannot_start_and_says_why(
    tmp_path: Path, nats_url: str, policy: PolicyStandIn
) -> None:
    state = tmp_path / "state"
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen(1)
    args = up_args(state, nats_url, script("meshssh-sshd"), "--setup-key", "KEY",
                   "--allow-server-ssh")  # fmt: skip
    args[args.index("--relay-port") + 1] = str(taken.getsockname()[1])
    try:
        code, _, err = await meshssh(*args)
        assert code == 0, err  # registered: the agent runs and keeps retrying the relay
        assert "relay keeps failing" in err
        assert "address in use" in err
    finally:
        await meshssh("down", "--state-dir", str(state))
        taken.close()
