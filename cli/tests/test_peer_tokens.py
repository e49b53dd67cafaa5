"""Per-peer tokens on the client side (SPEC §6): the agent's ``token-exchange`` op and
``meshssh ssh`` using it for every connection.

Real: nats-server, meshssh-policy, the agent process, the CLI
process and an asyncssh peer. The exchange itself is answered by
:mod:`exchange_responder`, which stands in for meshssh-authn's exchange service (built
separately for issue 15) on the real subject with the real messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from exchange_responder import ExchangeResponder, claims
from nats.aio.client import Client as NATS
from ssh_peer import MeshPeer, start_peer

from meshssh_agent.peers import PeerEntry
from meshssh_cli.link.client import AgentClient
from meshssh_cli.link.opener import open_agent
from meshssh_common import subjects
from meshssh_common.errors import BadRequest, MeshError
from meshssh_common.wire.authn import peer_audience
from meshssh_testkit import script
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import OpenSSH
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory


def idp_token(sub: str = "alice", lifetime: float = 300) -> str:
    """A JWT-shaped IdP token for the agent's cache (which reads only its times)."""

    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = time.time()
    return f"{part({'alg': 'none'})}.{part({'sub': sub, 'iat': now, 'exp': now + lifetime})}.c2ln"


class Mesh:
    """The laptop's agent, demo-server's SSH stand-in and authn's exchange stand-in."""

    def __init__(self, agent: AgentProcess, peer: MeshPeer, server_id: str) -> None:
        self.agent = agent
        self.peer = peer
        self.server_id = server_id
        self.seen: set[str] = set()


@pytest.fixture
async def management(
    nats_server: NatsServer, services: ServiceFactory, nc: NATS, tmp_path: Path
) -> Management:
    """meshssh-policy alone: no real meshssh-authn runs, so only the stand-in answers."""
    return await Management.start(services, nats_server, nc, tmp_path / "policy")


@pytest.fixture
async def authn(nc: NATS) -> AsyncIterator[ExchangeResponder]:
    async with ExchangeResponder.serve(nc) as responder:
        yield responder


@pytest.fixture
async def mesh(
    nats_server: NatsServer,
    tmp_path: Path,
    management: Management,
    authn: ExchangeResponder,
) -> AsyncIterator[Mesh]:
    seen: set[str] = set()
    server_id: list[str] = []

    def accept(password: str) -> bool:
        # what sshd checks of a per-peer token, in small: minted for this peer, used once
        if password not in authn.minted or password in seen:
            return False
        seen.add(password)
        return bool(claims(password).get("aud") == peer_audience(server_id[0]))

    peer = await start_peer("never-the-idp-token", host="127.0.0.2", accept=accept)
    registered = await management.register(
        "demo-server", "127.0.0.2", SERVER_KEY, host_key=peer.host_key_line
    )
    server_id.append(registered.peer_id)
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
        await proc.wait_status(lambda s: s["registered"] and s["nats_connected"])
        await proc.wait_status(lambda s: any(p["name"] == "demo-server" for p in s["peers"]))
        yield Mesh(proc, peer, registered.peer_id)
    finally:
        await proc.stop()
        await peer.stop()


async def test_token_exchange_returns_a_fresh_per_peer_token_each_time_and_keeps_the_idp_token(
    mesh: Mesh, authn: ExchangeResponder
) -> None:
    laptop = (await mesh.agent.status())["peer_id"]
    token = idp_token()
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        assert (await agent.token_put(token)).cached
        first = await agent.token_exchange(mesh.server_id)
        second = await agent.token_exchange(mesh.server_id)
        assert (await agent.token_get()).token == token  # the IdP token stays cached
    assert first.token == authn.minted[0]
    assert second.token == authn.minted[1]  # never cached: one exchange per call
    assert not first.cached
    assert not second.cached
    assert first.expires_at == pytest.approx(time.time() + 120, abs=10)
    assert [r.subject_token for r in authn.requests] == [token, token]
    assert [r.target_peer for r in authn.requests] == [mesh.server_id] * 2
    # the agent asks on its own subject only (the bus refuses any other)
    assert authn.subjects_seen == [subjects.token_exchange(laptop)] * 2


async def test_a_refused_idp_token_is_an_error_and_leaves_the_cache(
    mesh: Mesh, authn: ExchangeResponder
) -> None:
    authn.refuse = ("denied", "expired")
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        await agent.token_put(idp_token())
        with pytest.raises(MeshError) as refused:
            await agent.token_exchange(mesh.server_id)
        assert refused.value.code == "denied"
        assert "authn refused your login token (expired)" in refused.value.public
        assert (await agent.token_get()).token == ""  # dropped: the next call signs in afresh


async def test_an_exchange_without_authn_fails_with_a_clear_error_in_time(
    mesh: Mesh, authn: ExchangeResponder
) -> None:
    authn.silent = True  # an authn that never answers
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        await agent.token_put(idp_token())
        started = time.monotonic()
        with pytest.raises(MeshError) as down:
            await agent.token_exchange(mesh.server_id, timeout=15)
    assert time.monotonic() - started < 10
    assert down.value.code == "unavailable"
    assert "is meshssh-authn running?" in down.value.public


async def meshssh_ssh(mesh: Mesh, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = await asyncio.create_subprocess_exec(
        script("meshssh"),
        "ssh",
        "--state-dir",
        str(mesh.agent.state_dir),
        "-p",
        str(mesh.peer.port),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "MESHSSH_NO_BROWSER": "1"},
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_each_ssh_connection_sends_its_own_per_peer_token_never_the_idp_token(
    mesh: Mesh, authn: ExchangeResponder
) -> None:
    token = idp_token()
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        await agent.token_put(token)
    for _ in range(2):
        rc, out, err = await meshssh_ssh(mesh, "demo-server", "echo ok")
        assert (rc, out) == (0, "ok\n"), err
    assert len(authn.requests) == 2  # two connections, two exchanges
    assert mesh.peer.record.passwords == authn.minted
    assert token not in mesh.peer.record.passwords


async def test_openssh_through_the_proxy_gets_a_per_peer_token_per_connection(
    mesh: Mesh, authn: ExchangeResponder, openssh: OpenSSH, tmp_path: Path
) -> None:
    token = idp_token()
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        await agent.token_put(token)
    proxy = (
        f"{script('meshssh')} ssh proxy --state-dir {mesh.agent.state_dir} "
        f"demo-server {mesh.peer.port}"
    )
    options = [
        "-F",
        "none",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        "StrictHostKeyChecking=no",  # the proxy's throwaway key, as the drop-in sets it
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    for _ in range(2):
        result = await openssh.run(
            "ssh", "alice@demo-server", "echo ok", options=options, env={"MESHSSH_NO_BROWSER": "1"}
        )
        assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr
    assert len(authn.requests) == 2
    assert mesh.peer.record.passwords == authn.minted
    assert token not in mesh.peer.record.passwords


async def test_a_refused_exchange_fails_the_connection_and_sends_nothing(
    mesh: Mesh, authn: ExchangeResponder
) -> None:
    authn.refuse = ("rate_limited", "slow down")
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        await agent.token_put(idp_token())
    rc, _, err = await meshssh_ssh(mesh, "demo-server", "echo ok")
    assert rc == 255
    assert "no per-peer token for demo-server" in err
    assert "too many token exchanges" in err
    assert mesh.peer.record.passwords == []  # fail closed: no IdP token instead


async def test_a_target_without_a_peer_id_gets_no_token_and_a_bad_id_is_refused(
    mesh: Mesh, authn: ExchangeResponder
) -> None:
    async with AgentClient.connect(mesh.agent.state_dir) as agent:
        await agent.token_put(idp_token())
        with pytest.raises(BadRequest):
            await agent.token_exchange("Not A Peer")
    link = await open_agent(mesh.agent.state_dir)
    listed = await link.lookup("demo-server")
    assert listed is not None
    assert listed.peer_id == mesh.server_id  # the map's id reaches the client
    anonymous = PeerEntry("old-peer", "127.0.0.9", mesh.peer.host_key_line)
    with pytest.raises(RuntimeError, match="names no peer id for old-peer"):
        await link.peer_token(anonymous)
    assert authn.requests == []  # nothing was exchanged for either
