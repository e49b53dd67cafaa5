"""The agent's ops server (SPEC §1): ``/healthz``, ``/readyz`` (registered, map held, children
up) and ``/metrics``, on the address ``meshssh up --agent-ops-listen`` gives it."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_testkit.management import SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(url)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def wait_ready(url: str, want: bool) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            r = await get(f"{url}/readyz")
            if (r.status_code == 200) == want:
                body: dict[str, Any] = r.json()
                return body
            await asyncio.sleep(0.1)


@pytest.fixture
async def policy(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, services: ServiceFactory
) -> Management:
    return await Management.start(services, nats_server, nc, tmp_path)  # the real meshssh-policy


async def test_ready_when_registered_with_a_map_and_children_up_and_metrics_follow(
    nats_url: str, policy: Management
) -> None:
    with tempfile.TemporaryDirectory(prefix="mso-") as root:
        state = Path(root) / "state"
        agent = await AgentProcess.start(
            state,
            "--mesh-ip",
            "127.0.0.2",
            "--name",
            "server",
            "--nats-url",
            nats_url,
            "--management-url",
            policy.api,
            "--setup-key",
            SERVER_KEY,
            "--ssh-port",
            "0",
            "--relay-port",
            "0",
            "--relay-mode",
            "proxy",
            "--allow-server-ssh",
            "--agent-ops-listen",
            "127.0.0.1:0",
        )
        try:
            status = await agent.wait_status(lambda s: s.get("ops_url", "") != "")
            url = status["ops_url"]
            assert (await get(f"{url}/healthz")).status_code == 200
            ready = await wait_ready(url, True)
            assert ready["checks"] == {
                "nats": True,
                "serving": True,
                "registered": True,
                "map": True,
                "children": True,
            }
            status = await agent.status()
            text = (await get(f"{url}/metrics")).text
            assert metric(text, "meshssh_agent_map_serial") == status["serial"] > 0
            assert metric(text, "meshssh_agent_ready") == 1
            assert metric(text, "meshssh_agent_map_age_seconds") >= 0

            first = status["serial"]
            await policy.patch_peer("server", ssh_enabled=False)  # the dashboard switch
            status = await agent.wait_status(
                lambda s: s["serial"] > first and not s.get("ssh_running")
            )
            text = (await get(f"{url}/metrics")).text
            assert metric(text, "meshssh_agent_map_serial") >= status["serial"]
            ready = await wait_ready(url, True)  # once the relay has drained too
            assert ready["checks"]["children"]  # nothing that should run is down
            status = await agent.status()
            assert agent.child(status, "sshd").get("state") == "stopped"
            assert agent.child(status, "relay").get("state") == "stopped"
        finally:
            code = await agent.stop()
        assert code == 0  # SIGTERM drains: children first, then NATS
        with contextlib.suppress(httpx.HTTPError):
            await get(f"{url}/healthz")
            raise AssertionError("the ops server outlived the agent")
