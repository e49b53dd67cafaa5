"""The agent's Unix socket: each local user sees only their own token; only root and the
agent's user may stop or reconfigure it; another user's status has no NATS URL; bad input gets
an error, never a crash.

Other users are real: as root, the test creates a throwaway account (a unique name, always
removed) and runs a client process as it (``setpriv``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_common.wire.agent import SOCKET_NAME
from meshssh_testkit.management import LAPTOP_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.os_users import throwaway_user
from meshssh_testkit.peer_agent import AgentProcess, agent_request
from meshssh_testkit.plugin import ServiceFactory, need_tool

_CLIENT = """
import asyncio, json, sys
from pathlib import Path
from meshssh_cli.link.client import AgentClient
from meshssh_common.errors import MeshError
from meshssh_common.wire import PeerFlags

async def main():
    out = {}
    async with AgentClient.connect(Path(sys.argv[1])) as agent:
        status = await agent.status()
        out["nats_url"] = status.nats_url
        out["registered"] = status.registered
        out["before"] = (await agent.token_get()).token
        out["put"] = (await agent.token_put(sys.argv[2])).cached
        out["after"] = (await agent.token_get()).token
        for name, call in (("configure", lambda: agent.configure(PeerFlags(sftp=True))),
                           ("down", agent.down)):
            try:
                await call()
                out[name] = "allowed"
            except MeshError as e:
                out[name] = e.code + ": " + e.public
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
def other_uid() -> Iterator[int]:
    """A throwaway local account (unique name, removed after the test); its uid."""
    need_tool(os.geteuid() == 0, "root (to run a client as another user)")
    with throwaway_user("/bin/sh") as name:
        yield pwd.getpwnam(name).pw_uid


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{url}/metrics")).text


def jwt(sub: str, lifetime: float = 300) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = time.time()
    return f"{part({'alg': 'none'})}.{part({'sub': sub, 'iat': now, 'exp': now + lifetime})}.sig"


@pytest.fixture
def short_state_dir() -> Iterator[Path]:
    """A state dir another uid can reach (pytest's tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="mst-"))
    root.chmod(0o711)
    try:
        yield root / "state"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def agent(
    nc: NATS,
    nats_url: str,
    nats_server: NatsServer,
    short_state_dir: Path,
    tmp_path: Path,
    services: ServiceFactory,
) -> AsyncIterator[AgentProcess]:
    policy = await Management.start(services, nats_server, nc, tmp_path)  # the real meshssh-policy
    proc = await AgentProcess.start(
        short_state_dir,
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
        "--ssh-jwt-cache-ttl",
        "120",
    )
    try:
        await proc.wait_status(lambda s: s["registered"])
        yield proc
    finally:
        await proc.stop()


async def as_user(uid: int, state_dir: Path, token: str) -> dict[str, object]:
    setpriv = shutil.which("setpriv")
    need_tool(setpriv is not None, "setpriv (util-linux)")
    assert setpriv is not None
    proc = await asyncio.create_subprocess_exec(
        setpriv,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        sys.executable,
        "-c",
        _CLIENT,
        str(state_dir),
        token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


async def test_another_user_gets_only_their_own_token_no_bus_and_no_control(
    agent: AgentProcess, other_uid: int
) -> None:
    mode = stat.S_IMODE(os.stat(agent.state_dir / SOCKET_NAME).st_mode)
    assert mode == 0o666  # anyone may connect; the agent checks who
    assert stat.S_IMODE(os.stat(agent.state_dir).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(agent.state_dir / "peer.json").st_mode) == 0o600

    root_token = jwt("root-user")
    reply = await agent_request(agent.state_dir, {"op": "token-put", "token": root_token})
    assert reply["cached"] is True

    other_token = jwt("other-user")
    seen = await as_user(other_uid, agent.state_dir, other_token)
    assert seen["registered"] is True
    assert seen["nats_url"] == ""  # the bus is not theirs to reach
    assert seen["before"] == ""  # root's token is not theirs
    assert seen["put"] is True
    assert seen["after"] == other_token
    assert str(seen["configure"]).startswith(f"denied: uid {other_uid} may not change the agent")
    assert str(seen["down"]).startswith(f"denied: uid {other_uid} may not stop the agent")

    reply = await agent_request(agent.state_dir, {"op": "token-get"})
    assert reply["token"] == root_token
    status = await agent.status()
    assert status["registered"]  # their down was refused: still running
    assert status["nats_url"].startswith("nats://")  # the owner sees it
    assert not status["flags"].get("sftp", False)  # their configure was refused
    metrics = await scrape(status["ops_url"])
    assert 'meshssh_agent_socket_requests_total{op="down",outcome="denied"} 1.0' in metrics
    assert 'meshssh_agent_socket_requests_total{op="configure",outcome="denied"} 1.0' in metrics
    assert 'meshssh_agent_token_cache_lookups_total{result="hit"}' in metrics

    await agent_request(agent.state_dir, {"op": "token-drop"})
    assert (await agent_request(agent.state_dir, {"op": "token-get"}))["token"] == ""


async def test_bad_requests_get_an_error_and_the_agent_keeps_serving(agent: AgentProcess) -> None:
    path = agent.state_dir / SOCKET_NAME
    fd = os.open(agent.state_dir, os.O_RDONLY)
    try:
        reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)
    try:
        for garbage in (b"not json\n", b'{"op":"launch-missiles"}\n', b'{"op":"token-put"}\n'):
            writer.write(garbage)
            reply = json.loads(await reader.readline())
            assert reply["type"] == "error"
            assert reply["code"] == "bad_request"
        writer.write(b'{"op":"status"}\n')
        assert json.loads(await reader.readline())["type"] == "status"
        writer.write(b"x" * (70 * 1024) + b"\n")  # past the line limit: refused, hung up
        reply = json.loads(await reader.readline())
        assert reply["code"] == "bad_request"
        assert await reader.readline() == b""
    finally:
        writer.close()
    assert (await agent.status())["registered"]
