"""The whole client side for real: agents, the management plane and a signed-in user.

nats-server, ``meshssh-authn`` (its embedded provider; alice in group ``users``),
``meshssh-policy`` with the demo seed, and two real agents: ``demo-server`` (127.0.0.2,
``--allow-server-ssh``: it runs meshssh-sshd with the switches of :class:`PeerFeatures`) and
``demo-laptop`` (127.0.0.3, which writes the OpenSSH drop-in). ``meshssh login`` signs alice
in (the test posts authn's login form as a browser does), so the laptop agent's token cache
serves every ``ssh`` after it. Nothing is stood in for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mesh_sshd import LOCAL_IP, PEER_IP, PEER_NAME, PeerFeatures
from nats.aio.client import Client as NATS

from meshssh_testkit.openssh import OpenSSH, RunResult
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import run_command, script

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "services/policy/demo/seed.json"
ADMIN_TOKEN = "client-tests-admin-token-0123456789"
PASSWORD = "alice-client-password-42"


@dataclass
class AgentPeer:
    """demo-server as the tests see it: its sshd's port and the NATS its audit goes to."""

    port: int
    nc: NATS
    api: str

    async def revoke(self) -> None:
        """The dashboard switch: ``meshctl peers ssh disable demo-server`` (live sessions end)."""
        await run_command(
            script("meshctl"),
            "peers",
            "ssh",
            "disable",
            PEER_NAME,
            env={"MESHSSH_API_URL": self.api, "MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
            timeout=60,
            check=True,
        )


@dataclass
class AgentMesh:
    """OpenSSH with the laptop agent's drop-in; ``meshssh`` with the laptop agent's state."""

    peer: AgentPeer
    server: AgentProcess
    laptop: AgentProcess
    state_dir: Path
    launcher: Path
    config: Path
    openssh: OpenSSH

    async def run(self, tool: str, *args: str, **kw: object) -> RunResult:
        """Run ssh/scp/sftp with only the test config (which includes the agent's drop-in)."""
        return await self.openssh.run(tool, *args, options=["-F", str(self.config)], **kw)  # type: ignore[arg-type]


async def _agent(
    tmp: Path, name: str, ip: str, key: str, api: str, nats_url: str, *flags: str
) -> AgentProcess:
    agent = await AgentProcess.start(
        tmp / name,
        "--mesh-ip",
        ip,
        "--name",
        name,
        "--setup-key",
        key,
        "--nats-url",
        nats_url,
        "--management-url",
        api,
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        *flags,
    )
    await agent.wait_status(lambda s: s["registered"], timeout=60)
    return agent


async def _sign_in(state_dir: Path) -> None:
    """``meshssh login`` through the laptop agent; alice approves it in "her browser"."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    login = await asyncio.create_subprocess_exec(
        script("meshssh"),
        "login",
        "--state-dir",
        str(state_dir),
        "--no-browser",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert login.stderr is not None
    url = code = ""
    async with asyncio.timeout(45):
        while not code:
            line = (await login.stderr.readline()).decode()
            assert line, "meshssh login ended before printing the URL and code"
            if line.startswith("URL: "):
                url = line.removeprefix("URL: ").strip()
            elif line.startswith("Code: "):
                code = line.removeprefix("Code: ").strip()
        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.post(
                url,
                data={
                    "username": "alice",
                    "password": PASSWORD,
                    "user_code": code,
                    "confirm": "yes",
                },
            )
        assert page.status_code == 200, page.text
        _, err = await login.communicate()
    assert login.returncode == 0, err


@dataclass
class RunningSystem:
    """What :func:`running_system` started: demo-server's sshd, both agents, the drop-in."""

    peer: AgentPeer
    server: AgentProcess
    laptop: AgentProcess
    dropin: Path


@contextlib.asynccontextmanager
async def running_system(
    nc: NATS,
    nats_url: str,
    services: ServiceFactory,
    workdir: Path,
    features: PeerFeatures,
) -> AsyncIterator[RunningSystem]:
    """authn, policy and both agents (``services`` stops authn and policy; this, the agents),
    alice signed in on the laptop unless the peer is a machine-identity one."""
    users = workdir / "users.json"
    await run_command(
        script("meshssh-authn"),
        "users",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--group",
        "users",
        "--password-stdin",
        "--users-file",
        str(users),
        input=PASSWORD + "\n",
        timeout=30,
        check=True,
    )
    await services.start(
        "meshssh-authn",
        "--nats-url",
        nats_url,
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        str(users),
        "--device-poll-interval",
        "1",
    )
    policy = await services.start(
        "meshssh-policy",
        "--nats-url",
        nats_url,
        "--listen",
        "127.0.0.1:0",
        "--seed",
        str(SEED),
        "--mesh-prefix",
        "127.0.0.0/8",
        env={"MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    found = re.search(r"api listening.*url=(http://\S+)", policy.output())
    assert found, policy.output()
    api = found[1]
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=5) as http:
        while (await http.get(f"{api}/api/v1/auth/config")).status_code != 200:
            await asyncio.sleep(0.1)  # until authn has published the provider
    port = free_port(PEER_IP)
    server = await _agent(
        workdir,
        PEER_NAME,
        PEER_IP,
        "meshssh-demo-server-key-0001",
        api,
        nats_url,
        "--allow-server-ssh",
        "--ssh-port",
        str(port),
        "--disable-ssh-config",
        *features.flags(),
    )
    laptop = None
    try:
        await server.wait_status(lambda s: server.child(s, "sshd")["state"] == "running", 60)
        dropin = workdir / "ssh_config.d" / "99-meshssh.conf"
        laptop = await _agent(
            workdir,
            "demo-laptop",
            LOCAL_IP,
            "meshssh-demo-laptop-key-0001",
            api,
            nats_url,
            "--ssh-port",
            "0",
            "--ssh-jwt-cache-ttl",
            "600",
            "--ssh-config-file",
            str(dropin),
        )
        async with asyncio.timeout(30):
            while PEER_NAME not in (dropin.read_text() if dropin.exists() else ""):
                await asyncio.sleep(0.05)  # the laptop agent wrote its drop-in
        if features.jwt:
            await _sign_in(laptop.state_dir)
        yield RunningSystem(AgentPeer(port, nc, api), server, laptop, dropin)
    finally:
        if laptop is not None:
            await laptop.stop()
        await server.stop()


@pytest.fixture
async def agent_mesh(
    nc: NATS,
    nats_url: str,
    services: ServiceFactory,
    tmp_path: Path,
    openssh: OpenSSH,
    peer_features: PeerFeatures,
) -> AsyncIterator[AgentMesh]:
    """The real system, demo-server's sshd with ``peer_features``, alice signed in on the
    laptop (unless the peer is a machine-identity one); every process stops after the test."""
    async with running_system(nc, nats_url, services, tmp_path, peer_features) as system:
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Port {system.peer.port}\nBatchMode yes\nConnectTimeout 20\nInclude {system.dropin}\n"
        )
        yield AgentMesh(
            system.peer,
            system.server,
            system.laptop,
            system.laptop.state_dir,
            Path(script("meshssh")),
            config,
            openssh,
        )
