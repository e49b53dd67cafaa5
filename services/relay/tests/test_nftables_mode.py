"""meshssh-relay in nftables mode, inside network namespaces this test creates.

Two peers, each in its own namespace, joined by a veth with mesh addresses 100.64.0.1 and
100.64.0.2. The relay runs inside peer A's namespace (its NATS is the test's nats-server,
forwarded onto A's loopback); an SSH server listens on A's 100.64.0.1:22022; the OpenSSH
client runs in B's namespace and dials port 22. Until meshssh-sshd lands, the server on 22022
is a real asyncssh server that reports the TCP source it sees (no PROXY header here).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.netns import NetNs, PortForward, netns_unavailable_reason, veth_pair
from meshssh_testkit.openssh import OpenSSH, RunResult
from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import ServiceProcess, script
from meshssh_testkit.signing import write_test_pins
from meshssh_testkit.ssh_upstreams import ProxySshServer

USER = getpass.getuser()
TABLE = "meshssh-relay-p1"
A_IP, B_IP = "100.64.0.1", "100.64.0.2"


@dataclass
class Mesh:
    a: NetNs
    b: NetNs
    if_a: str
    nats_url: str  # as seen from inside A
    nats_creds: Path
    nc: NATS


@pytest.fixture
async def mesh(nc: NATS, nats_server: NatsServer) -> AsyncIterator[Mesh]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    need_tool(shutil.which("nft") is not None, "nft (nftables)")
    await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    a, b = await NetNs.create("a"), await NetNs.create("b")
    forward = None
    try:
        if_a, _ = await veth_pair(a, f"{A_IP}/10", b, f"{B_IP}/10")
        port = nats_server.port
        forward = await PortForward.start(a, ("127.0.0.1", port))
        url = f"nats://127.0.0.1:{forward.port}"
        yield Mesh(a, b, if_a, url, nats_server.creds("admin"), nc)
    finally:
        if forward is not None:
            await forward.stop()
        await a.delete()
        await b.delete()


async def start_relay(mesh: Mesh, *extra: str) -> ServiceProcess:
    argv = mesh.a.argv(
        script("meshssh-relay"),
        "--mode",
        "nftables",
        "--mesh-interface",
        mesh.if_a,
        "--pins",
        str(write_test_pins(mesh.nats_creds.parent.parent / "pins")),
        "--peer-id",
        "p1",
        "--listen",
        f"{A_IP}:22",
        "--sshd",
        f"{A_IP}:22022",
        "--nats-url",
        mesh.nats_url,
        "--nats-creds",
        str(mesh.nats_creds),
        "--ops-listen",
        "127.0.0.1:0",
        *extra,
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return ServiceProcess(proc, "meshssh-relay")


async def wait_log(proc: ServiceProcess, text: str, count: int = 1) -> None:
    try:
        async with asyncio.timeout(15):
            while sum(text in line for line in list(proc.log)) < count:
                if proc.proc.returncode is not None:
                    raise AssertionError(f"relay exited:\n{proc.output()}")
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {text!r} in the relay log:\n{proc.output()}") from None


async def rules(ns: NetNs) -> list[dict[str, object]] | None:
    """The rules of the relay's table, or None when the table does not exist."""
    code, out, _ = await ns.run("nft", "-j", "list", "table", "inet", TABLE, check=False)
    if code != 0:
        return None
    return [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]


async def ssh_from_b(mesh: Mesh, openssh: OpenSSH, command: str = "hi") -> RunResult:
    options = mesh.b.argv("ssh", *openssh.base_options())[1:]  # "ip" is the tool
    return await openssh.run(
        "ip", *options, "-p", "22", f"{USER}@{A_IP}", command, options=[], timeout=30
    )


async def test_ssh_to_port_22_lands_on_22022_with_the_original_source_and_the_rule_follows_the_map(
    mesh: Mesh, openssh: OpenSSH
) -> None:
    server = ProxySshServer(A_IP, client_key=openssh.public_key, sock=mesh.a.listener(A_IP, 22022))
    await server.start()
    with openssh.known_hosts.open("a") as f:  # port 22: known_hosts names the bare address
        f.write(f"{A_IP} {server.public_line}\n")
    map_a = make_map(1, mesh_ip=A_IP, mesh_prefix="100.64.0.0/10", sources=[f"{B_IP}/32"])
    await put_map(mesh.nc, map_a)
    relay = await start_relay(mesh)
    try:
        await wait_log(relay, "redirect installed")
        (rule,) = await rules(mesh.a) or []
        assert rule["comment"] == f"meshssh-relay:redirect:{A_IP}:22:22022"

        result = await ssh_from_b(mesh, openssh, "through-the-kernel")
        assert result.returncode == 0, result.err
        assert result.out.strip() == f"source={B_IP} command=through-the-kernel"

        # SSH off for this peer: the rule goes, and port 22 is closed again.
        await put_map(
            mesh.nc, make_map(2, mesh_ip=A_IP, mesh_prefix="100.64.0.0/10", ssh_enabled=False)
        )
        await wait_log(relay, "redirect removed")
        assert await rules(mesh.a) is None
        result = await ssh_from_b(mesh, openssh)
        assert result.returncode == 255
        assert "refused" in result.err

        # On again; then the relay is killed (a crash) and started again: still one rule.
        await put_map(mesh.nc, make_map(3, mesh_ip=A_IP, mesh_prefix="100.64.0.0/10"))
        await wait_log(relay, "redirect installed", count=2)
        relay.proc.kill()
        await relay.stop()
        assert len(await rules(mesh.a) or []) == 1  # left behind by the crash
        relay = await start_relay(mesh)
        await wait_log(relay, "redirect already in place")
        assert len(await rules(mesh.a) or []) == 1
        result = await ssh_from_b(mesh, openssh)
        assert result.returncode == 0, result.err

        # A clean stop removes the rule and the table.
        assert await relay.stop() == 0
        assert await rules(mesh.a) is None
    finally:
        await relay.stop()
        await server.stop()


async def test_cleanup_removes_the_rule_a_killed_relay_left_behind(mesh: Mesh) -> None:
    await put_map(mesh.nc, make_map(1, mesh_ip=A_IP, mesh_prefix="100.64.0.0/10"))
    relay = await start_relay(mesh)
    try:
        await wait_log(relay, "redirect installed")
        relay.proc.kill()
        await relay.stop()
        assert len(await rules(mesh.a) or []) == 1
        code, _, err = await mesh.a.run(
            script("meshssh-relay"),
            "--cleanup",
            "--mode",
            "nftables",
            "--mesh-interface",
            mesh.if_a,
            "--peer-id",
            "p1",
            "--listen",
            f"{A_IP}:22",
            "--sshd",
            f"{A_IP}:22022",
            check=False,
        )
        assert code == 0, err
        assert await rules(mesh.a) is None
    finally:
        await relay.stop()
