"""The NATS config deploy/k8s ships, run: three real nodes with the bootstrap's Secrets.

The StatefulSet's ``nats.conf`` runs unchanged but for its paths (each node's under the test's
directory) and the pod names (``localhost`` on ports of the test's choosing), with the files of
the Secrets ``bootstrap-secrets.sh`` would apply. Anonymous and plaintext connections are
refused, the routes join over mutual TLS, and policy's identity, connected as the services
connect, keeps a three-replica bucket across the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from meshssh_common.connection import connect_nats
from meshssh_testkit.natsd import nats_server_binary
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import terminate

Build = Callable[[str], list[dict[str, Any]]]  # the `kustomize` fixture (conftest)
Bootstrap = tuple[Path, dict[str, dict[str, bytes]]]  # the `bootstrap` fixture (conftest)
_LISTEN = re.compile(r"Listening for client connections on \S+:(\d+)")


def nats_conf(docs: list[dict[str, Any]]) -> str:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "nats-config"]
    return str(cm["data"]["nats.conf"])


def node_conf(conf: str, home: Path, route_ports: list[int], index: int) -> str:
    """The pod's config with its paths moved under ``home`` and the pod names on localhost."""
    conf = conf.replace("/etc/nats/", f"{home}/etc/nats/").replace("/data/", f"{home}/data/")
    conf = conf.replace("/var/run/nats/", f"{home}/")
    conf = conf.replace("port: 4222", "port: -1").replace(
        "port: 6222", f"port: {route_ports[index]}"
    )
    conf = re.sub(r"^\s*http_port:.*$", "", conf, flags=re.M)  # monitoring: not needed here
    for j, port in enumerate(route_ports):
        conf = conf.replace(f"nats://nats-{j}.nats-cluster:6222", f"nats://localhost:{port}")
    return conf


class Node:
    """One nats-server running a node's config; ``port`` is its client port."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.port = 0
        self.log: list[str] = []
        self.listening = asyncio.Event()
        self.drain = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            self.log.append(line)
            if (m := _LISTEN.search(line)) and not self.port:
                self.port = int(m[1])
                self.listening.set()
        self.listening.set()

    async def stop(self) -> None:
        await terminate(self.proc)
        await self.drain


@contextlib.asynccontextmanager
async def nats_cluster(
    conf: str, secrets: dict[str, dict[str, bytes]], root: Path
) -> AsyncIterator[list[Node]]:
    """Three nodes as the StatefulSet runs them (free_port: routes must name each other's port)."""
    route_ports = [free_port("127.0.0.1") for _ in range(3)]
    nodes: list[Node] = []
    try:
        for i in range(3):
            home = root / f"nats-{i}"
            for secret, sub in (("meshssh-nats-auth", "auth"), ("meshssh-nats-tls", "tls")):
                (home / "etc/nats" / sub).mkdir(parents=True)
                for key, value in secrets[secret].items():
                    (home / "etc/nats" / sub / key).write_bytes(value)
            (home / "etc/nats/config").mkdir()
            path = home / "etc/nats/config/nats.conf"
            path.write_text(node_conf(conf, home, route_ports, i))
            proc = await asyncio.create_subprocess_exec(
                nats_server_binary(),
                "--config",
                str(path),
                env={"POD_NAME": f"nats-{i}"},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            nodes.append(Node(proc))
        for node in nodes:
            async with asyncio.timeout(15):
                await node.listening.wait()
            assert node.port, "".join(node.log)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def connect(port: int, ca: Path, creds: Path) -> NATS:
    """A client the way the services connect (``connect_nats``: tls://, the CA, the creds)."""
    async with asyncio.timeout(10):
        return await connect_nats(
            f"tls://localhost:{port}", name="k8s-test", creds=creds, ca=ca, retry_initial=False
        )


async def test_the_shipped_nats_config_runs_a_tls_cluster_that_refuses_anonymous_and_plaintext(
    kustomize: Build, bootstrap: Bootstrap, tmp_path: Path
) -> None:
    bus, secrets = bootstrap
    conf = nats_conf(kustomize("prod"))
    async with nats_cluster(conf, secrets, tmp_path) as nodes:
        # anonymous, over TLS: refused by the operator mode
        ctx = ssl.create_default_context(cafile=str(bus / "ca.crt"))
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            async with asyncio.timeout(10):
                await nats.connect(
                    f"tls://localhost:{nodes[0].port}", tls=ctx, allow_reconnect=False
                )
        # plaintext: the server demands TLS before anything else
        reader, writer = await asyncio.open_connection("localhost", nodes[0].port)
        try:
            async with asyncio.timeout(5):
                assert b'"tls_required":true' in await reader.readline()
                writer.write(b"CONNECT {}\r\nPING\r\n")
                # no PONG: it is no TLS handshake, so the server hangs up
                assert await reader.read() in {b"", b"-ERR 'Secure Connection - TLS Required'\r\n"}
        finally:
            writer.close()
        # policy's identity makes an R3 bucket on one node (so the routes carry JetStream over
        # mutual TLS) and reads it back through another
        policy = await connect(nodes[0].port, bus / "ca.crt", bus / "policy.creds")
        other = await connect(nodes[2].port, bus / "ca.crt", bus / "policy.creds")
        try:
            async with asyncio.timeout(60):  # the meta leader election of a fresh cluster
                while True:
                    try:
                        kv = await policy.jetstream(timeout=2).create_key_value(
                            bucket="meshssh-netmaps", replicas=3, history=1
                        )
                        break
                    except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                        # a route refused over TLS never heals: say so instead of timing out
                        refused = [x for n in nodes for x in n.log if "route handshake error" in x]
                        assert not refused, refused[0]
                        await asyncio.sleep(0.5)
            await kv.put("peer.p1", b"map")
            entry = await (await other.jetstream(timeout=5).key_value("meshssh-netmaps")).get(
                "peer.p1"
            )
            assert entry.value == b"map"
        finally:
            await policy.close()
            await other.close()
