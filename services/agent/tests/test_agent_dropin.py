"""The agent keeps the OpenSSH drop-in current as its map changes, removes it on ``meshssh
down``, and honours the opt-outs. A real agent process (a user's peer); the management plane
is the real meshssh-policy (testkit ``Management``), where servers come and go as an operator
and their own agents make them. The drop-in always goes to a temp path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_testkit import script
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory


@pytest.fixture
async def policy(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, services: ServiceFactory
) -> Management:
    management = await Management.start(services, nats_server, nc, tmp_path / "policy")
    await management.register("demo-server", "127.0.0.2", key=SERVER_KEY)
    return management


async def start_agent(
    state: Path,
    nats_url: str,
    policy: Management,
    *args: str,
    env: dict[str, str] | None = None,
) -> AgentProcess:
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
        *args,
        env=env,
    )
    await agent.wait_status(lambda s: s["registered"])
    return agent


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(15):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


def dropin_gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_the_agent_rewrites_the_dropin_on_every_map_and_down_removes_it(
    nc: NATS, nats_url: str, tmp_path: Path, policy: Management
) -> None:
    dropin = tmp_path / "ssh" / "99-meshssh.conf"
    state = tmp_path / "state"
    agent = await start_agent(state, nats_url, policy, "--ssh-config-file", str(dropin))
    try:
        await until(lambda: "demo-server" in text(dropin), "the first map's peer is listed")
        first = text(dropin)
        assert 'Match host "127.0.0.2,demo-server" exec' in first
        assert f"--state-dir {state}" in first
        assert "ssh proxy" in first

        # a server that reported no SSH host key (nothing for the drop-in to pin)
        await policy.register("printer", "127.0.0.5", key=SERVER_KEY, host_key="")
        await policy.register("db", "127.0.0.4", key=SERVER_KEY)
        await until(lambda: "127.0.0.4" in text(dropin), "a new peer is added")
        status = await agent.status()
        assert "printer" in {p["name"] for p in status["peers"]}  # in the map...
        assert "printer" not in text(dropin)  # ...but no pinned host key: plain OpenSSH's

        server_id = (await policy.peer("demo-server"))["id"]
        await policy.call("DELETE", f"/peers/{server_id}")  # the operator removes it
        await until(lambda: "demo-server" not in text(dropin), "a removed peer goes away")
        assert "127.0.0.4" in text(dropin)

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
        assert not dropin.exists()
    finally:
        await agent.stop()


async def test_with_the_opt_out_the_agent_keeps_no_dropin(
    nats_url: str, tmp_path: Path, policy: Management
) -> None:
    for n, (args, env) in enumerate(
        [(("--disable-ssh-config",), {}), ((), {"MESHSSH_DISABLE_SSH_CONFIG": "1"})]
    ):
        dropin = tmp_path / f"dropin-{n}.conf"
        dropin.write_text("# left from before\n")
        agent = await start_agent(
            tmp_path / "state", nats_url, policy, *args, "--ssh-config-file", str(dropin), env=env
        )
        try:
            await until(dropin_gone(dropin), "the opted-out agent removes the file")
            await asyncio.sleep(0.3)  # a late write would show up here
            assert not dropin.exists()
        finally:
            assert await agent.stop() == 0
