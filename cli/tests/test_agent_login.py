"""The agent hosts the token cache: callers of one uid share one device flow (against a real
meshssh-authn provider), a caller that hangs up leaves it, and the token is cached for the
uid afterwards. The management plane is the real meshssh-policy (the agent registers with it
and finds the provider through its ``/api/v1/auth/config``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from meshssh_agent.tokens import token_times
from meshssh_cli.link.client import AgentClient
from meshssh_common.wire.agent import PromptReply
from meshssh_testkit.management import LAPTOP_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess

if TYPE_CHECKING:
    from conftest import Provider


@pytest.fixture
async def agent(
    nats_server: NatsServer, tmp_path: Path, management: Management
) -> AsyncIterator[AgentProcess]:
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


async def login(state: Path, prompts: asyncio.Queue[PromptReply]) -> str:
    async with AgentClient.connect(state) as client:
        reply = await client.token_get(login=True, on_prompt=prompts.put_nowait, timeout=60)
    return reply.token


async def test_callers_share_one_device_flow_and_the_token_is_then_cached(
    agent: AgentProcess, provider: Provider
) -> None:
    state = agent.state_dir
    # A caller that hangs up leaves the flow; with nobody left, the flow stops.
    first: asyncio.Queue[PromptReply] = asyncio.Queue()
    quitter = asyncio.create_task(login(state, first))
    async with asyncio.timeout(20):
        abandoned = await first.get()
    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    async with asyncio.timeout(10):
        while "login abandoned by its caller" not in agent.output():
            await asyncio.sleep(0.02)

    # Two callers of the same uid now: one new flow, the same code for both.
    queues: list[asyncio.Queue[PromptReply]] = [asyncio.Queue(), asyncio.Queue()]
    callers = [asyncio.create_task(login(state, q)) for q in queues]
    async with asyncio.timeout(20):
        prompts = [await q.get() for q in queues]
    assert prompts[0].code == prompts[1].code
    assert prompts[0].code != abandoned.code
    assert prompts[0].url == f"{provider.issuer}/device"

    page = await provider.approve(prompts[0].code)
    assert page.status_code == 200
    async with asyncio.timeout(30):
        tokens = await asyncio.gather(*callers)
    assert tokens[0] == tokens[1]
    iat, exp = token_times(tokens[0])
    assert iat is not None
    assert exp is not None

    async with AgentClient.connect(state) as client:
        cached = await client.token_get()  # no login: only what is cached
    assert cached.cached
    assert cached.token == tokens[0]
    assert cached.expires_at <= exp
