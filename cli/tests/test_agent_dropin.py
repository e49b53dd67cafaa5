"""The agent keeps the OpenSSH drop-in current as its map changes, removes it on ``meshssh
down``, and honours the opt-outs. A real agent process; the management plane is the real
meshssh-policy, where the servers the laptop sees are registered without agents of their own.
The drop-in always goes to a temp path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client as NATS

from meshssh_testkit import script
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import run_command

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"


async def start_agent(state: Path, nats_url: str, *args: str,
                      env: dict[str, str] | None = None) -> AgentProcess:  # fmt: skip
    agent = await AgentProcess.start(
        state, "--mesh-ip", "127.0.0.3", "--name", "laptop", "--nats-url", nats_url,
        "--setup-key", LAPTOP_KEY, "--ssh-port", "0", "--relay-port", "0", *args, env=env,
    )  # fmt: skip
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


async def start_policy(
    services: ServiceFactory, nats_url: str, nc: NATS, tmp_path: Path
) -> Management:
    policy = await Management.start(services, nats_url, nc, tmp_path / "policy")
    await policy.register("demo-server", "127.0.0.2", SERVER_KEY, host_key=KEY)
    return policy


async def test_the_agent_rewrites_the_dropin_on_every_map_and_down_removes_it(
    nc: NATS, nats_url: str, tmp_path: Path, services: ServiceFactory
) -> None:
    dropin = tmp_path / "ssh" / "99-meshssh.conf"
    policy = await start_policy(services, nats_url, nc, tmp_path)
    state = tmp_path / "state"
    agent = await start_agent(state, nats_url, "--ssh-config-file", str(dropin))
    try:
        await until(lambda: "demo-server" in text(dropin), "the first map's peer is listed")
        first = text(dropin)
        assert 'Match host "127.0.0.2,demo-server" exec' in first
        assert f"--state-dir {state}" in first
        assert "ssh proxy" in first

        await policy.register("db", "127.0.0.4", SERVER_KEY, host_key=KEY)
        await policy.register("printer", "127.0.0.5", SERVER_KEY, host_key="")
        await until(lambda: "127.0.0.4" in text(dropin), "a new peer is added")
        assert "printer" not in text(dropin)  # no pinned host key: plain OpenSSH handles it

        await policy.delete_peer("demo-server")
        await until(lambda: "demo-server" not in text(dropin), "a removed peer goes away")
        assert "127.0.0.4" in text(dropin)

        await run_command(script("meshssh"), "down", "--state-dir", str(state), timeout=30,
                          check=True)  # fmt: skip
        assert not dropin.exists()
    finally:
        await agent.stop()


async def test_with_the_opt_out_the_agent_keeps_no_dropin(
    nc: NATS, nats_url: str, tmp_path: Path, services: ServiceFactory
) -> None:
    await start_policy(services, nats_url, nc, tmp_path)
    for n, (args, env) in enumerate(
        [(("--disable-ssh-config",), {}), ((), {"MESHSSH_DISABLE_SSH_CONFIG": "1"})]
    ):
        dropin = tmp_path / f"dropin-{n}.conf"
        dropin.write_text("# left from before\n")
        agent = await start_agent(tmp_path / "state", nats_url, *args,
                                  "--ssh-config-file", str(dropin), env=env)  # fmt: skip
        try:
            await until(dropin_gone(dropin), "the opted-out agent removes the file")
            await asyncio.sleep(0.3)  # a late write would show up here
            assert not dropin.exists()
        finally:
            assert await agent.stop() == 0
