"""The agent's Unix socket: each local user sees only their own token; only root and the
agent's user may stop or reconfigure it; bad input gets an error, never a crash.

Other users are real: as root, the test runs a client process as uid 65534 (nobody).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_testkit.netmaps import make_map
from meshssh_testkit.peer_agent import AgentProcess, agent_request
from meshssh_testkit.plugin import need_tool
from meshssh_testkit.policy_standin import PolicyStandIn

NOBODY = 65534
_CLIENT = """
import asyncio, json, sys
from pathlib import Path
from meshssh_cli.link.client import AgentClient
from meshssh_common.errors import MeshError

async def main():
    out = {}
    async with AgentClient.connect(Path(sys.argv[1])) as agent:
        out["before"] = (await agent.token_get()).token
        out["put"] = (await agent.token_put(sys.argv[2])).cached
        out["after"] = (await agent.token_get()).token
        try:
            await agent.down()
            out["down"] = "allowed"
        except MeshError as e:
            out["down"] = e.code + ": " + e.public
    print(json.dumps(out))

asyncio.run(main())
"""


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
async def agent(nc: NATS, nats_url: str, short_state_dir: Path) -> AsyncIterator[AgentProcess]:
    policy = await PolicyStandIn.start(nc, netmap=make_map(1, ssh_enabled=False))
    proc = await AgentProcess.start(
        short_state_dir, "--mesh-ip", "127.0.0.2", "--name", "laptop", "--nats-url", nats_url,
        "--setup-key", "KEY", "--ssh-port", "0", "--relay-port", "0",
        "--ssh-jwt-cache-ttl", "120",
    )  # fmt: skip
    try:
        await proc.wait_status(lambda s: s["registered"])
        yield proc
    finally:
        await proc.stop()
        await policy.stop()


async def as_nobody(state_dir: Path, token: str) -> dict[str, object]:
    setpriv = shutil.which("setpriv")
    need_tool(setpriv is not None, "setpriv (util-linux)")
    assert setpriv is not None
    proc = await asyncio.create_subprocess_exec(
        setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        sys.executable, "-c", _CLIENT, str(state_dir), token,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


async def test_each_local_user_sees_only_their_own_cached_token(agent: AgentProcess) -> None:
    need_tool(os.geteuid() == 0, "root (to run a client as another uid)")
    mode = stat.S_IMODE(os.stat(agent.state_dir / "agent.sock").st_mode)
    assert mode == 0o666  # anyone may connect; the agent checks who
    assert stat.S_IMODE(os.stat(agent.state_dir).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(agent.state_dir / "peer.json").st_mode) == 0o600

    root_token = jwt("root-user")
    reply = await agent_request(agent.state_dir, {"op": "token-put", "token": root_token})
    assert reply["cached"] is True

    nobody_token = jwt("nobody-user")
    seen = await as_nobody(agent.state_dir, nobody_token)
    assert seen["before"] == ""  # root's token is not nobody's
    assert seen["put"] is True
    assert seen["after"] == nobody_token
    assert str(seen["down"]).startswith("denied: uid 65534 may not stop the agent")

    reply = await agent_request(agent.state_dir, {"op": "token-get"})
    assert reply["token"] == root_token
    status = await agent.status()
    assert status["registered"]  # nobody's down was refused: still running

    await agent_request(agent.state_dir, {"op": "token-drop"})
    assert (await agent_request(agent.state_dir, {"op": "token-get"}))["token"] == ""


async def test_bad_requests_get_an_error_and_the_agent_keeps_serving(agent: AgentProcess) -> None:
    path = agent.state_dir / "agent.sock"
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
