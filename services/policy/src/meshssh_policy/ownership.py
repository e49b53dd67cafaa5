"""Which policy replica publishes which peer's map: partitioned ownership over live replicas.

Every replica computes every change (its state is complete), but publishes only the maps of
the peers it owns. A peer's owner is chosen by rendezvous hashing over the live replicas: the
member with the highest ``blake2b(member/peer)`` score. All replicas that see the same live
set agree on every owner without talking about peers, and when a replica joins or leaves only
the peers it gains or loses move (about 1/N of them).

Liveness is a heartbeat on core NATS (``meshssh.policy.v1.evt.members``, every
``interval`` seconds), not a KV lease: it must keep working while a JetStream stream elects a
new leader (4 to 9 s after a NATS node died), which a KV write cannot. A member not heard from
for ``lease`` seconds is dropped; one that stops cleanly says so (``leaving``) and is dropped
at once. A replica joins only once its engine has loaded the state, so it never owns a peer
it cannot compute.

When the live set changes, the peers this replica gained are handed to ``on_gained`` (the
engine recomputes and publishes them). So the maps of a replica that died are published by
the others within ``lease`` seconds plus one recomputation.

Exactly one publisher per peer holds whenever the replicas agree on the live set; for the
moment they do not (a join or a death seen at slightly different times) two replicas may
both publish a peer, or briefly none. Both are safe: every map write is a compare-and-set
that never goes backwards (:mod:`meshssh_policy.publisher`), and a peer nobody published is
picked up by whoever gains it.

Example::

    ownership = Ownership(nc, member_id="policy-0-3f2a", log=log)
    engine.owns = ownership.owns
    ownership.on_gained = engine.recompute_soon
    await ownership.run(peers=lambda: set(state.peers))   # after engine.loaded
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import codec, subjects
from meshssh_common.errors import WireError
from meshssh_common.logs import BoundLogger
from meshssh_policy.metrics import PolicyMetrics

__all__ = ["Member", "Ownership", "owner_of"]


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """One replica's heartbeat (policy replicas to each other)."""

    id: str
    leaving: bool = False


def _score(member: str, peer_id: str) -> int:
    digest = hashlib.blake2b(f"{member}/{peer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(peer_id: str, members: Iterable[str]) -> str:
    """The member that owns ``peer_id`` among ``members`` (rendezvous hashing)."""
    return max(members, key=lambda m: (_score(m, peer_id), m))


class Ownership:
    """This replica's view of the live replicas, and the peers it owns among them."""

    def __init__(
        self,
        nc: NATS,
        member_id: str,
        *,
        log: BoundLogger,
        metrics: PolicyMetrics | None = None,
        interval: float = 1.0,
        lease: float = 3.0,
    ) -> None:
        if lease <= interval:
            raise ValueError("the lease must be longer than the heartbeat interval")
        self.nc = nc
        self.me = member_id
        self.log = log
        self.metrics = metrics
        self.interval = interval
        self.lease = lease
        self.on_gained: Callable[[set[str]], None] | None = None
        self._seen: dict[str, float] = {}  # other member -> when last heard (monotonic)
        self._live: frozenset[str] = frozenset({member_id})
        self._peers: Callable[[], set[str]] = set

    @property
    def live(self) -> frozenset[str]:
        """The members this replica counts as live (itself included)."""
        return self._live

    def owns(self, peer_id: str) -> bool:
        """Whether this replica publishes ``peer_id``'s map."""
        return self._mine(peer_id, self._live)

    def _mine(self, peer_id: str, live: frozenset[str]) -> bool:
        return len(live) == 1 or owner_of(peer_id, live) == self.me

    async def run(self, peers: Callable[[], set[str]]) -> None:
        """Heartbeat, listen to the others and expire them until cancelled; then leave.

        ``peers`` gives every peer id (to find the ones gained when the live set changes).
        """
        self._peers = peers
        self._count_owned()
        sub = await self.nc.subscribe(subjects.POLICY_MEMBERS, cb=self._on_member)
        self.log.info("map ownership: joined", extra={"member": self.me})
        try:
            while True:
                await self._beat(Member(id=self.me))
                self._expire()
                await asyncio.sleep(self.interval / 2)
                self._expire()
                await asyncio.sleep(self.interval / 2)
        finally:
            with contextlib.suppress(Exception):
                await self.nc.publish(
                    subjects.POLICY_MEMBERS, codec.encode(Member(id=self.me, leaving=True))
                )
                await self.nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _count_owned(self) -> None:
        if self.metrics is not None:
            self.metrics.replicas.set(len(self._live))
            self.metrics.owned.set(sum(1 for p in self._peers() if self.owns(p)))

    async def _beat(self, member: Member) -> None:
        with contextlib.suppress(Exception):  # NATS away: the others expire us; we carry on
            await self.nc.publish(subjects.POLICY_MEMBERS, codec.encode(member))

    async def _on_member(self, msg: Msg) -> None:
        try:
            member = codec.decode(msg.data, Member)
        except WireError as e:
            self.log.warning("bad member heartbeat", extra={"error": str(e)})
            return
        if member.id == self.me:
            return
        if member.leaving:
            self._seen.pop(member.id, None)
        else:
            self._seen[member.id] = time.monotonic()
        self._update()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.lease
        for member, at in list(self._seen.items()):
            if at < cutoff:
                del self._seen[member]
        self._update()

    def _update(self) -> None:
        live = frozenset({self.me, *self._seen})
        if live == self._live:
            return
        old, self._live = self._live, live
        gained = {p for p in self._peers() if self._mine(p, live) and not self._mine(p, old)}
        self._count_owned()
        self.log.info(
            "map ownership: live replicas changed",
            extra={"replicas": sorted(live), "gained": len(gained)},
        )
        if gained and self.on_gained is not None:
            self.on_gained(gained)
