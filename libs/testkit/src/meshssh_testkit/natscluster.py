"""A real 3-node nats-server cluster for tests: routes, JetStream R3, auth as on one server.

Every node is a :class:`~meshssh_testkit.natsd.NatsServer` with the same bus keys (one
operator, the MESHSSH account, the service identities: see :mod:`meshssh_testkit.natsd`), its
own store and resolver directory, a ``server_name`` and a ``cluster`` block routing to the
others. Client ports are picked by each server (port -1, read from its log); route ports come
from :func:`~meshssh_testkit.ports.free_port` (a route list must name them before the servers
start). A node keeps its ports across :meth:`NatsCluster.kill` and :meth:`NatsCluster.revive`.

A cluster stands in for a :class:`NatsServer` wherever a test hands one around: :attr:`url`
is every node's URL comma-separated (what ``--nats-url`` takes), :meth:`flags` adds
``--nats-replicas 3`` for policy and authn so they create every bucket and stream with three
replicas, and
:meth:`connect` gives a client all three URLs.

Example::

    cluster = await NatsCluster.start(tmp_path / "nats")
    await services.start("meshssh-policy", *cluster.flags("policy"), ...)
    await cluster.kill(0)            # SIGKILL one node; clients move to the others
    await cluster.revive(0)          # same ports, store and keys
    await cluster.restart()          # every node down, then every node up again
    await cluster.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from meshssh_common.bus_keys import BusKeys
from meshssh_testkit.natsd import TLS_HOSTS, NatsServer, NatsServerError
from meshssh_testkit.ports import free_port

__all__ = ["CLUSTER_NAME", "NatsCluster"]

CLUSTER_NAME = "meshssh-test"


class NatsCluster:
    """``size`` nats-server processes routed to each other, sharing one set of bus keys."""

    def __init__(self, nodes: list[NatsServer], keys: BusKeys, tls: bool) -> None:
        self.nodes = nodes
        self.keys = keys
        self.tls = tls

    @classmethod
    async def start(
        cls,
        base: Path,
        *,
        size: int = 3,
        tls: bool = False,
        timeout: float = 30.0,
        only: Sequence[int] | None = None,
    ) -> NatsCluster:
        """Start ``size`` nodes storing under ``base`` and wait until JetStream answers.

        Args:
            base: a directory for the bus keys (``base/bus``) and each node's store.
            size: how many nodes (3: what R3 needs).
            tls: every node serves ``tls://`` with a certificate from the bus CA.
            timeout: seconds for the whole start, JetStream's meta leader included.
            only: start just these nodes and do not wait for JetStream (a cluster still
                forming, without a quorum: JetStream answers nothing); :meth:`revive` starts
                the others.
        """
        base.mkdir(parents=True, exist_ok=True)
        keys = BusKeys.create(base / "bus", tls_hosts=TLS_HOSTS if tls else ())
        routes = [free_port("127.0.0.1") for _ in range(size)]
        nodes = [NatsServer(base / f"n{i}", -1, (), keys, tls) for i in range(size)]
        for i, node in enumerate(nodes):
            others = ", ".join(
                f"nats-route://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i
            )
            node.config_extra = (
                f'server_name: "n{i}"\n'
                f'cluster {{ name: "{CLUSTER_NAME}", listen: "127.0.0.1:{routes[i]}",'
                f" routes: [{others}] }}"
            )
        cluster = cls(nodes, keys, tls)
        try:
            async with asyncio.timeout(timeout):
                starting = nodes if only is None else [nodes[i] for i in only]
                await asyncio.gather(*(node.restart(timeout) for node in starting))
                if only is None:
                    await cluster.wait_jetstream()
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    # -- what a NatsServer offers, for every node at once ---------------------------------

    @property
    def urls(self) -> list[str]:
        """Each node's client URL (also while it is down: it comes back on the same port)."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (``--nats-url``)."""
        return ",".join(self.urls)

    @property
    def ca(self) -> Path | None:
        """The CA that signed the nodes' certificates (None without TLS)."""
        return self.nodes[0].ca

    def creds(self, role: str) -> Path:
        """The creds file of ``policy``, ``authn``, ``admin`` or ``system``."""
        return self.nodes[0].creds(role)

    def peer_creds(self, peer_id: str, ttl: float = 3600) -> Path:
        """A new peer identity (see :meth:`NatsServer.peer_creds`); valid on every node."""
        return self.nodes[0].peer_creds(peer_id, ttl)

    def flags(self, identity: str | Path = "admin", *, replicas: bool | None = None) -> list[str]:
        """``--nats-url`` with every node, creds, CA, and ``--nats-replicas`` = the size.

        ``replicas`` (None: for the ``policy`` and ``authn`` roles, the services that create
        buckets and streams) adds ``--nats-replicas``; ``meshssh up`` does not take it.
        """
        flags = self.nodes[0].flags(identity)
        flags[flags.index("--nats-url") + 1] = self.url
        if replicas is None:
            replicas = identity in ("policy", "authn")
        return [*flags, "--nats-replicas", str(len(self.nodes))] if replicas else flags

    def authn_flags(self) -> list[str]:
        """Authn's :meth:`flags` and its ``--jwks-signing-key`` (the bus directory's)."""
        return [*self.flags("authn"), "--jwks-signing-key", str(self.nodes[0].jwks_signing_key())]

    def client_options(self, identity: str | Path = "admin") -> dict[str, Any]:
        """``nats.connect`` keyword arguments for an identity (creds, inbox prefix, TLS)."""
        return self.nodes[0].client_options(identity)

    async def connect(self, identity: str | Path = "admin", **kw: Any) -> NATS:
        """A client given every node's URL, connected as ``identity``."""
        options = {
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.2,
            **self.client_options(identity),
            **kw,
        }
        return await nats.connect(servers=self.urls, **options)

    # -- faults -----------------------------------------------------------------------------

    async def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash: clients and routes get no goodbye)."""
        await self.nodes[index].kill()

    async def revive(self, index: int, timeout: float = 30.0) -> None:
        """Start node ``index`` again (same ports, store, keys) and wait until JetStream answers."""
        async with asyncio.timeout(timeout):
            await self.nodes[index].restart(timeout)
            await self.wait_jetstream()

    async def restart(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM), then start them all again and wait for JetStream."""
        await self.stop()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(node.restart(timeout) for node in self.nodes))
            await self.wait_jetstream()

    async def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after 5 s)."""
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)

    async def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Wait until every running node sees the same JetStream meta leader and all its peers.

        Raises:
            TimeoutError: no leader with every node in ``timeout`` (the last answer is in it).
        """
        last = ""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = await self._meta_state()
                    if last == "ok":
                        return
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise TimeoutError(f"JetStream cluster not ready: {last}") from None

    async def _meta_state(self) -> str:
        """Why not yet ("ok" when ready): the meta leader as each running node sees it.

        Ok when every running node names the same leader and the leader counts every other
        running node as current.
        """
        running = [node for node in self.nodes if node.running]
        if not running:
            raise NatsServerError("no node is running")
        views: dict[str, dict[str, Any]] = {}
        for i, node in enumerate(self.nodes):
            if not node.running:
                continue
            try:
                views[f"n{i}"] = await _meta_view(node)
            except (OSError, nats.errors.Error, TimeoutError, ValueError) as e:
                return f"n{i}: {e!r}"
        leaders = {str(view.get("leader") or "") for view in views.values()}
        if len(leaders) != 1 or "" in leaders:
            return f"meta leaders seen: {sorted(leaders)}"
        leader = leaders.pop()
        if leader not in views:
            return f"meta leader {leader} is not running"
        current = {r["name"] for r in views[leader].get("replicas") or [] if r.get("current")}
        missing = set(views) - current - {leader}
        if missing:
            return f"{leader} does not count {sorted(missing)} as current"
        for i, node in enumerate(self.nodes):  # the account's JetStream, not only the meta layer
            if node.running and (why := await _account_state(node)):
                return f"n{i}: {why}"
        return "ok"


async def _account_state(node: NatsServer) -> str:
    """Why the services' account has no JetStream on ``node`` yet ("" once it answers).

    Right after the meta leader is elected a node can still answer "account not found"
    (10035) to the account's first stream create: a service started then would crash.
    """
    try:
        nc = await nats.connect(node.url, allow_reconnect=False, **node.client_options("admin"))
    except (OSError, nats.errors.Error, TimeoutError) as e:
        return repr(e)
    try:
        await nc.jetstream().account_info()
    except (nats.errors.Error, TimeoutError) as e:
        return repr(e)
    finally:
        await nc.close()
    return ""


async def _meta_view(node: NatsServer) -> dict[str, Any]:
    """Node ``node``'s own ``meta_cluster`` (JSZ asked of that server by its id)."""
    nc = await nats.connect(node.url, allow_reconnect=False, **node.client_options("system"))
    try:
        server_id = nc._server_info["server_id"]
        reply = await nc.request(f"$SYS.REQ.SERVER.{server_id}.JSZ", b"{}", timeout=2)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    meta: dict[str, Any] = json.loads(reply.data).get("data", {}).get("meta_cluster") or {}
    return meta
