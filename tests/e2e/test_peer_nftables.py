"""Two peers in network namespaces: ``meshssh up`` on peer A picks the kernel redirect by
itself, OpenSSH on peer B reaches ``A:22`` and lands on 22022, and ``meshssh down`` leaves no
rule and no process behind.

Peer A's agent runs inside A's namespace (NATS is the test's nats-server, forwarded onto A's
loopback); the management plane is the real meshssh-policy (``Management``, in the root
namespace on that nats-server, its REST API forwarded onto A's loopback as NATS is): A
registers with the server key, B's 100.64.0.2 is a registered laptop, so the policy's rule
admits it. The SSH server is the agent's meshssh-sshd
(``--disable-ssh-auth``: machine identity, so the network ACL alone decides); B also holds
100.64.0.3, a source the map has no rule for (it never registered), which sshd must refuse.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.host_keys import load_or_create_host_key
from meshssh_common.kv import open_bucket
from meshssh_testkit.management import SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.netns import NetNs, PortForward, netns_unavailable_reason, veth_pair
from meshssh_testkit.openssh import OpenSSH
from meshssh_testkit.peer_agent import AgentProcess, pid_alive
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.process import script

USER = getpass.getuser()
A_IP, B_IP, STRANGER_IP = "100.64.0.1", "100.64.0.2", "100.64.0.3"
PREFIX = "100.64.0.0/10"


@dataclass
class Mesh:
    a: NetNs
    b: NetNs
    if_a: str
    nats_url: str  # as seen from inside A
    nats_creds: Path


@pytest.fixture
async def mesh(nc: NATS, nats_server: NatsServer) -> AsyncIterator[Mesh]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    need_tool(shutil.which("nft") is not None, "nft (nftables)")
    await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    a, b = await NetNs.create("pa"), await NetNs.create("pb")
    forward = None
    try:
        if_a, if_b = await veth_pair(a, f"{A_IP}/10", b, f"{B_IP}/10")
        await b.ip("addr", "add", f"{STRANGER_IP}/10", "dev", if_b)
        forward = await PortForward.start(a, ("127.0.0.1", nats_server.port))
        url = f"nats://127.0.0.1:{forward.port}"
        yield Mesh(a, b, if_a, url, nats_server.creds("admin"))
    finally:
        if forward is not None:
            await forward.stop()
        await a.delete()
        await b.delete()


async def tables(ns: NetNs) -> list[str]:
    _, out, _ = await ns.run("nft", "-j", "list", "tables")
    return [t["table"]["name"] for t in json.loads(out)["nftables"] if "table" in t]


async def test_up_uses_the_kernel_redirect_and_down_leaves_no_rule_and_no_process(
    mesh: Mesh,
    nc: NATS,
    nats_server: NatsServer,
    openssh: OpenSSH,
    tmp_path: Path,
    services: ServiceFactory,
) -> None:
    policy = await Management.start(services, nats_server, nc, tmp_path, mesh_prefix=PREFIX)
    await policy.register("laptop", B_IP)
    # The agent registers over REST: policy's API forwarded onto A's loopback too.
    api = urllib.parse.urlsplit(policy.api)
    api_forward = await PortForward.start(mesh.a, (api.hostname or "", api.port or 0))
    state = tmp_path / "a-state"
    agent = await AgentProcess.start(
        state,
        "--mesh-ip",
        A_IP,
        "--name",
        "server",
        "--nats-url",
        mesh.nats_url,
        "--management-url",
        f"http://127.0.0.1:{api_forward.port}",
        "--setup-key",
        SERVER_KEY,
        "--allow-server-ssh",
        "--disable-ssh-auth",
        "--enable-ssh-root",
        "--sshd-bin",
        script("meshssh-sshd"),
        prefix=tuple(mesh.a.argv()),
    )
    try:
        status = await agent.wait_status(
            lambda s: (
                agent.child(s, "relay")["state"] == "running"
                and agent.child(s, "sshd")["state"] == "running"
            )
        )
        assert status["relay_mode"] == "nftables"
        assert status["relay_mode_reason"] == f"kernel redirect on {mesh.if_a}"
        table = f"meshssh-relay-{status['peer_id']}"
        async with asyncio.timeout(15):
            while table not in await tables(mesh.a):
                await asyncio.sleep(0.05)
        host_key = agent_host_key(state)
        with openssh.known_hosts.open("a") as f:
            f.write(f"{A_IP} {host_key}\n")

        async def ssh_from(source: str, command: str) -> tuple[int, str, str]:
            options = mesh.b.argv("ssh", *openssh.base_options())[1:]
            result = await openssh.run(
                "ip", *options, "-b", source, f"{USER}@{A_IP}", command, options=[], timeout=30
            )
            return result.returncode, result.out.strip(), result.err

        code, out, err = await ssh_from(B_IP, "echo $SSH_CLIENT")
        assert code == 0, err
        assert out.split()[0] == B_IP  # sshd on 22022 saw the original source
        assert out.split()[2] == "22022"  # and the connection landed on 22022
        code, out, err = await ssh_from(STRANGER_IP, "echo should-not-run")
        assert code == 255, out  # no rule for this source: sshd's ACL refuses it

        pids = [agent.child(status, name)["pid"] for name in ("sshd", "relay")]
        code, _, err = await mesh.a.run(script("meshssh"), "down", "--state-dir", str(state))
        assert code == 0, err
        async with asyncio.timeout(15):
            assert await agent.proc.wait() == 0
        assert table not in await tables(mesh.a)
        for pid in pids:
            assert not pid_alive(pid)
    finally:
        await agent.stop()
        await api_forward.stop()


def agent_host_key(state: Path) -> str:
    """The public half of the agent's host key (what management distributes for pinning)."""
    return load_or_create_host_key(state / "ssh_host_ed25519_key").public_line
