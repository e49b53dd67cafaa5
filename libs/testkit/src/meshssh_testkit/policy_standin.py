"""A stand-in for meshssh-policy's peer endpoints (register, meta), for agent tests.

It answers ``meshssh.policy.v1.req.register`` and ``req.meta`` on the test's real NATS with the
wire types of the contract, checks setup keys and peer credentials like the real service, keeps
every request for assertions, and writes the map it hands out into the netmaps bucket. The
real service replaces it wherever a test is about the management plane itself.

Example::

    policy = await PolicyStandIn.start(nc, netmap=make_map(1, peer_id="p1"))
    ...  # run an agent with --setup-key KEY
    policy.registers[0].setup_key == "KEY"
    await policy.stop()
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.micro.service import Service

from meshssh_common import subjects
from meshssh_common.errors import Denied
from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.rpc import add_endpoint, start_micro
from meshssh_common.wire import (
    MetaReply,
    MetaUpdate,
    NetworkMap,
    RegisterReply,
    RegisterRequest,
)
from meshssh_testkit.netmaps import put_map

__all__ = ["PolicyStandIn"]


class PolicyStandIn:
    """See the module docstring; ``netmap`` is what a registering peer gets.

    More peers: ``others`` are the maps of further peers, each given to the peer registering
    with that map's peer name (``--name``).
    """

    def __init__(
        self, nc: NATS, netmap: NetworkMap, setup_key: str, others: tuple[NetworkMap, ...] = ()
    ) -> None:
        self.nc = nc
        self.netmap = netmap
        self.setup_key = setup_key
        self.credential = f"cred-{netmap.peer.id}"
        self.others = {m.peer.name: m for m in others}
        self.registers: list[RegisterRequest] = []
        self.metas: list[MetaUpdate] = []
        self._service: Service | None = None

    @classmethod
    async def start(
        cls,
        nc: NATS,
        *,
        netmap: NetworkMap,
        setup_key: str = "KEY",
        others: tuple[NetworkMap, ...] = (),
    ) -> PolicyStandIn:
        """Serve register and meta on ``nc``."""
        standin = cls(nc, netmap, setup_key, others)
        metrics, log = ServiceMetrics("policy"), service_logger("policy-standin")
        svc = await start_micro(nc, "policy")
        await add_endpoint(svc, "register", subjects.POLICY_REGISTER, RegisterRequest,
                           standin._register, metrics=metrics, log=log)  # fmt: skip
        await add_endpoint(svc, "meta", subjects.POLICY_META, MetaUpdate, standin._meta,
                           metrics=metrics, log=log)  # fmt: skip
        standin._service = svc
        for m in (netmap, *others):
            await put_map(nc, m)
        return standin

    async def _register(self, req: RegisterRequest) -> RegisterReply:
        self.registers.append(req)
        netmap = self.others.get(req.name, self.netmap)
        credential = f"cred-{netmap.peer.id}"
        if req.setup_key:
            if req.setup_key != self.setup_key:
                raise Denied(f"unknown setup key {req.setup_key!r}", public="invalid setup key")
        elif req.peer_id != netmap.peer.id or req.credential != credential:
            raise Denied("bad peer credential", public="unknown peer")
        return RegisterReply(peer_id=netmap.peer.id, credential=credential, netmap=netmap)

    async def _meta(self, req: MetaUpdate) -> MetaReply:
        if req.peer_id != self.netmap.peer.id or req.credential != self.credential:
            raise Denied("bad peer credential", public="unknown peer")
        self.metas.append(req)
        return MetaReply(serial=self.netmap.serial)

    async def publish(self, netmap: NetworkMap) -> None:
        """Make ``netmap`` the peer's current map (KV, and the next registration's reply)."""
        self.netmap = netmap
        await put_map(self.nc, netmap)

    async def stop(self) -> None:
        """Stop answering."""
        if self._service is not None:
            await self._service.stop()
