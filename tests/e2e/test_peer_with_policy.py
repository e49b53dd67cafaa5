"""The agent against the real management plane: a meshssh-policy process, meshctl, NATS.

An operator makes a group and a setup key with meshctl; ``meshssh up --allow-server-ssh``
registers with it and runs sshd and the relay; ``meshctl peers ssh disable`` stops sshd within
2 s, ``enable`` starts it again; the peer's flags, online state and SSH state reach the
management plane; a restarted agent logs in with its stored credential.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess, Status, pid_alive
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import run_command, script

TOKEN = "relay-e2e-admin-token-0123456789"
MESH_IP = "127.0.0.2"


async def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    result = await run_command(*argv, env=env or {}, timeout=timeout)
    return result.returncode, result.out, result.err


class Meshctl:
    def __init__(self, api: str) -> None:
        self.env = {"MESHSSH_API_URL": api, "MESHSSH_ADMIN_TOKEN": TOKEN}

    async def __call__(self, *args: str) -> Any:
        code, out, err = await run(script("meshctl"), "--json", *args, env=self.env)
        assert code == 0, (args, err)
        return json.loads(out) if out.strip() else None


def sshd_of(agent: AgentProcess, status: Status) -> Status:
    return agent.child(status, "sshd")


async def test_the_agent_follows_the_real_management_plane(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> None:
    policy = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--bus-keys",  # policy signs the peers' JWTs when they register
        str(nats_server.creds("policy").parent),  # the bus keys directory
        "--listen",
        "127.0.0.1:0",
        "--mesh-prefix",
        "127.0.0.0/8",
        env={"MESHSSH_ADMIN_TOKEN": TOKEN},
    )
    api = re.search(r"api listening.*url=(http://\S+)", policy.output())
    assert api, policy.output()
    meshctl = Meshctl(api[1])
    await meshctl("groups", "create", "servers")
    key = (
        await meshctl("setup-keys", "create", "srv", "--auto-group", "servers", "--ssh-enabled")
    )["key"]

    state = tmp_path / "state"
    args = (
        "--mesh-ip",
        MESH_IP,
        "--name",
        "web1",
        *nats_server.flags(),
        "--management-url",
        api[1],
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--allow-server-ssh",
        "--sshd-bin",
        script("meshssh-sshd"),
    )
    agent = await AgentProcess.start(state, *args, "--setup-key", key)
    try:
        status = await agent.wait_status(lambda s: sshd_of(agent, s)["state"] == "running")
        peer_id = status["peer_id"]
        peer = await meshctl("peers", "show", "web1")
        assert peer["id"] == peer_id
        assert peer["capabilities"] == ["native_ssh"]
        assert peer["flags"]["server_ssh_allowed"] is True
        assert peer["ssh_host_key"].startswith("ssh-ed25519 ")

        async with asyncio.timeout(15):  # heartbeats reach the management plane
            while not (peer := await meshctl("peers", "show", "web1"))["ssh_running"]:
                await asyncio.sleep(0.2)
        assert peer["online"] is True
        assert peer["relay_mode"] == "proxy"

        # The dashboard switch, through meshctl: off stops sshd within 2 s.
        sshd_pid = sshd_of(agent, status)["pid"]
        await meshctl("peers", "ssh", "disable", "web1")
        switched = time.monotonic()
        async with asyncio.timeout(10):
            while pid_alive(sshd_pid):
                await asyncio.sleep(0.02)
        assert time.monotonic() - switched < 2.0
        await meshctl("peers", "ssh", "enable", "web1")
        status = await agent.wait_status(
            lambda s: (
                sshd_of(agent, s)["state"] == "running" and sshd_of(agent, s)["pid"] != sshd_pid
            )
        )

        # A flag change on the running agent reaches management as metadata.
        code, _, err = await run(
            script("meshssh"), "up", "--state-dir", str(state), *args, "--enable-ssh-sftp"
        )
        assert code == 0, err
        assert (await meshctl("peers", "show", "web1"))["flags"]["sftp"] is True

        # Stopped and started again without the setup key: the stored credential logs it in.
        assert await agent.stop() == 0
        agent = await AgentProcess.start(state, *args)
        status = await agent.wait_status(lambda s: s["registered"])
        assert status["peer_id"] == peer_id
        assert len(await meshctl("peers")) == 1
    finally:
        await agent.stop()
