"""The client side of the agent socket: ``meshssh login`` through a running agent, and the
link ``meshssh ssh`` and the proxy use (token, peers, local mesh address), against a real
agent process, a real meshssh-authn provider and the real meshssh-policy (demo-server is
registered there without an agent of its own, so that the laptop's map lists it)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from meshssh_cli.link.opener import open_agent
from meshssh_cli.ssh.errors import LinkError
from meshssh_common.jwt_validation import JwtValidator
from meshssh_testkit import script
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess

if TYPE_CHECKING:
    from conftest import Provider

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"


@pytest.fixture
async def agent(
    nats_server: NatsServer, tmp_path: Path, management: Management
) -> AsyncIterator[AgentProcess]:
    # demo-server runs no agent here: registered so that the laptop's map lists it.
    await management.register("demo-server", "127.0.0.2", SERVER_KEY, host_key=HOST_KEY)
    proc = await AgentProcess.start(
        tmp_path / "state",
        "--mesh-ip",
        "127.0.0.3",
        "--name",
        "laptop",
        *nats_server.flags(),
        "--setup-key",
        LAPTOP_KEY,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--management-url",
        management.api,
        "--ssh-jwt-cache-ttl",
        "300",
    )
    try:
        await proc.wait_status(lambda s: s["registered"])
        yield proc
    finally:
        await proc.stop()


async def meshssh_login(*args: str) -> asyncio.subprocess.Process:
    drop = ("DISPLAY", "WAYLAND_DISPLAY", "MESHSSH_MANAGEMENT_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return await asyncio.create_subprocess_exec(
        script("meshssh"),
        "login",
        "--no-browser",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def user_code(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "meshssh login ended before printing the code"
            if line.startswith("Code: "):
                return line.removeprefix("Code: ").strip()


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_login_through_the_agent_leaves_the_token_in_its_cache_for_ssh(
    agent: AgentProcess, provider: Provider
) -> None:
    proc = await meshssh_login("--state-dir", str(agent.state_dir), "--print-token")
    code = await user_code(proc)
    assert (await provider.approve(code)).status_code == 200
    rc, out, err = await finish(proc)
    assert rc == 0, err
    token = out.strip()
    assert JwtValidator.from_snapshot(provider.snapshot).validate(token).user_id == "alice"
    assert "login requested" in agent.output()  # the agent ran the flow, not the command

    link = await open_agent(agent.state_dir)
    issued = await link.get_token()
    assert (issued.value, issued.cached) == (token, True)

    again = await meshssh_login("--state-dir", str(agent.state_dir), "--print-token")
    rc, out, err = await finish(again)
    assert rc == 0, err
    assert out.strip() == token
    assert "Code: " not in err
    assert "Already signed in" in err


async def test_a_forced_new_token_runs_a_new_device_flow_in_the_agent(
    agent: AgentProcess, provider: Provider, capfd: pytest.CaptureFixture[str]
) -> None:
    link = await open_agent(agent.state_dir)
    first = asyncio.create_task(link.get_token())
    async with asyncio.timeout(20):
        while not link.prompts.shown:
            await asyncio.sleep(0.02)
    await provider.approve(link.prompts.shown[0])
    async with asyncio.timeout(30):
        fresh = await first
    assert not fresh.cached
    err = capfd.readouterr().err
    assert f"Code: {link.prompts.shown[0]}" in err
    assert f"URL: {provider.issuer}/device" in err

    second = asyncio.create_task(link.get_token(force_new=True))
    async with asyncio.timeout(20):
        while len(link.prompts.shown) < 2:
            await asyncio.sleep(0.02)
    await provider.approve(link.prompts.shown[1])
    async with asyncio.timeout(30):
        renewed = await second
    assert not renewed.cached
    assert link.prompts.shown[0] != link.prompts.shown[1]


async def test_the_link_answers_from_the_agents_current_map(agent: AgentProcess) -> None:
    link = await open_agent(agent.state_dir)
    assert await link.local_mesh_ip() == "127.0.0.3"
    found = await link.lookup("Demo-Server.")
    assert found is not None
    assert (found.name, found.mesh_ip, found.host_key_line) == (
        "demo-server",
        "127.0.0.2",
        HOST_KEY,
    )
    assert await link.lookup("127.0.0.2") == found
    assert await link.lookup("elsewhere") is None
    assert [p.name for p in await link.peers()] == ["demo-server"]


async def test_without_an_agent_the_link_says_none_runs_and_login_needs_a_provider(
    tmp_path: Path,
) -> None:
    with pytest.raises(LinkError, match="no meshssh agent socket"):
        await open_agent(tmp_path)
    proc = await meshssh_login("--state-dir", str(tmp_path))
    rc, _, err = await finish(proc)
    assert rc == 2
    assert "no agent runs there" in err
