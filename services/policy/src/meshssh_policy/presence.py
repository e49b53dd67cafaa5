"""Peer liveness from heartbeats: online until ``peer_offline_timeout`` passes without one.

Every replica subscribes to ``meshssh.policy.v1.evt.heartbeat.*`` (not in a queue group: each
needs the whole picture for its REST answers and dashboard). Online state is volatile: after a
restart peers count as offline until their next heartbeat. A heartbeat whose ``peer_id`` does
not match its subject is dropped and counted.

Example::

    presence.online("3fa9c1d2e0b4")     # True within the timeout of the last heartbeat
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg

from meshssh_common.errors import BadReason
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.wire import Heartbeat
from meshssh_policy.metrics import PolicyMetrics

__all__ = ["Presence", "Seen"]


@dataclass(frozen=True, slots=True)
class Seen:
    """The last heartbeat of a peer and when it arrived."""

    heartbeat: Heartbeat
    at: float  # wall clock, for display
    mono: float  # monotonic, for the timeout


class Presence:
    """Last heartbeat per peer; online when recent enough."""

    def __init__(
        self,
        timeout: float,
        *,
        metrics: PolicyMetrics,
        base: ServiceMetrics,
        log: BoundLogger,
    ) -> None:
        self.timeout = timeout
        self.metrics = metrics
        self.base = base
        self.log = log
        self.seen: dict[str, Seen] = {}
        self._online: set[str] = set()

    async def on_heartbeat(self, hb: Heartbeat, msg: Msg) -> None:
        """Record a heartbeat (the handler of ``HEARTBEAT_ALL``)."""
        if msg.subject.rsplit(".", 1)[-1] != hb.peer_id:
            self.base.bad_messages.labels(endpoint="heartbeat", reason=BadReason.BAD_TOKEN).inc()
            self.log.warning(
                "dropped heartbeat for another peer",
                extra={"subject": msg.subject, "peer": hb.peer_id},
            )
            return
        self.metrics.heartbeats.inc()
        self.seen[hb.peer_id] = Seen(hb, time.time(), time.monotonic())
        if hb.peer_id not in self._online:
            self._online.add(hb.peer_id)
            self.log.info("peer online", extra={"peer": hb.peer_id})

    def online(self, peer_id: str) -> bool:
        """Whether ``peer_id`` sent a heartbeat within the timeout."""
        seen = self.seen.get(peer_id)
        return seen is not None and time.monotonic() - seen.mono <= self.timeout

    async def run(self, known: Callable[[], set[str]]) -> None:
        """Track transitions to offline and the online gauge, until cancelled.

        Args:
            known: the ids of the peers that exist (heartbeats of removed peers are forgotten).
        """
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            peers = known()
            for peer_id in list(self.seen):
                if peer_id not in peers:
                    del self.seen[peer_id]
            for peer_id in list(self._online):
                if not self.online(peer_id):
                    self._online.discard(peer_id)
                    self.log.info("peer offline", extra={"peer": peer_id})
            self.metrics.peers_online.set(len(self._online & peers))
