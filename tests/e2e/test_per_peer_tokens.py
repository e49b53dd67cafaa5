"""One credential, one target: per-peer tokens with real OpenSSH and two servers (issue 15).

The laptop's drop-in makes plain ``ssh`` exchange alice's IdP token for a per-peer token at
authn on every connection, so both servers let her in. A token captured on its way to server A
(here: asked of the laptop agent exactly as the drop-in's proxy asks for it) is then sent by
OpenSSH itself as the password (``SSH_ASKPASS``), the way a thief would: server B refuses it
(its audience names A), A accepts it once and refuses the replay. The IdP token itself works
only at a server started with ``--accept-idp-tokens`` (B), never at A.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import openssh_available
from meshssh_testkit.peer_agent import agent_request
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.whole_system import USER, Server, System, run, sign_in, whole_system

SERVERS = (
    Server("demo-server", "127.0.0.2"),
    Server("demo-server-b", "127.0.0.4", ("--accept-idp-tokens",)),
)


@pytest.fixture
async def system(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[System]:
    need_tool(openssh_available(), "OpenSSH (ssh, scp, sftp)")
    async with whole_system(nats_server, services, tmp_path, servers=SERVERS) as running:
        yield running


async def with_password(system: System, server: Server, token: str) -> tuple[int, str, str]:
    """Plain OpenSSH from the laptop's address to ``server``'s port 22, ``token`` as password."""
    secret = system.tmp / "captured-token"
    secret.write_text(token)
    secret.chmod(0o600)
    askpass = system.tmp / "askpass"
    askpass.write_text(f"#!/bin/sh\ncat {secret}\n")
    askpass.chmod(0o700)
    return await run(
        "ssh",
        *("-F", "/dev/null", "-p", str(system.relay_ports[server.name])),
        *("-o", "BindAddress=127.0.0.3", "-o", "ConnectTimeout=20"),
        *("-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"),
        *("-o", "NumberOfPasswordPrompts=1", "-o", "StrictHostKeyChecking=no"),
        *("-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"),
        f"{USER}@{server.ip}",
        "id -un",
        env={"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"},
    )


async def sshd_metrics(system: System, server: Server) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"http://{system.sshd_ops[server.name]}/metrics")).text


async def test_a_token_captured_at_one_server_opens_nothing_else(system: System) -> None:
    a, b = SERVERS
    await sign_in(system)
    for server in SERVERS:  # the drop-in exchanges per connection: both let alice in
        rc, out, err = await run(
            *system.tool("ssh", f"{USER}@{server.name}", "id -un", server=server.name)
        )
        assert (rc, out.strip()) == (0, USER), err

    a_id = (await system.servers[a.name].status())["peer_id"]
    reply = await agent_request(
        system.laptop.state_dir, {"op": "token-exchange", "target_peer": a_id}, timeout=30
    )
    captured = reply["token"]
    assert reply["type"] == "token", reply
    assert captured

    rc, out, _ = await with_password(system, b, captured)
    assert rc != 0
    assert out == ""
    assert 'reason="wrong_audience"' in await sshd_metrics(system, b)

    rc, out, err = await with_password(system, a, captured)  # its one use
    assert (rc, out.strip()) == (0, USER), err
    rc, out, _ = await with_password(system, a, captured)
    assert rc != 0
    assert out == ""
    assert 'reason="replayed"' in await sshd_metrics(system, a)


async def test_the_idp_token_works_only_where_the_peer_accepts_idp_tokens(system: System) -> None:
    a, b = SERVERS
    await sign_in(system)
    reply = await agent_request(system.laptop.state_dir, {"op": "token-get"}, timeout=10)
    idp_token = reply["token"]
    assert idp_token, reply
    rc, out, err = await with_password(system, b, idp_token)
    assert (rc, out.strip()) == (0, USER), err
    rc, out, _ = await with_password(system, a, idp_token)
    assert rc != 0
    assert out == ""
    assert 'reason="idp_token_refused"' in await sshd_metrics(system, a)
