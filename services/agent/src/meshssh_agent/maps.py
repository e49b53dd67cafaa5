"""The agent's view of its network map: the registration reply first, then the KV watch.

A peer watches only its own key (``peer.<id>`` in ``meshssh-netmaps``) and applies a snapshot
only when its serial is higher than the one it holds (SPEC §4). A delete (the peer was
removed) drops the map, which switches SSH off. The bucket is never created by a peer: it
waits for the management plane to have made it.

Example::

    maps = MapState(on_change=agent.map_changed)
    maps.offer(reply.netmap)
    await watch_map(nc, peer_id, maps, log=log, metrics=metrics)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from meshssh_common import subjects
from meshssh_common.errors import WireError
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.wire import NetworkMap

__all__ = ["MapState", "watch_map"]


class MapState:
    """The held map and its serial; ``on_change`` runs after each applied change."""

    def __init__(self, on_change: Callable[[NetworkMap | None], None]) -> None:
        self.current: NetworkMap | None = None
        self.serial = 0
        self._on_change = on_change

    def offer(self, netmap: NetworkMap) -> bool:
        """Apply ``netmap`` if it is newer; returns whether it was applied."""
        if netmap.serial <= self.serial:
            return False
        self.current, self.serial = netmap, netmap.serial
        self._on_change(netmap)
        return True

    def drop(self) -> None:
        """The map was deleted: no map, serial back to 0."""
        self.current, self.serial = None, 0
        self._on_change(None)


async def _bucket(js: JetStreamContext) -> KeyValue:
    delay = 0.2
    while True:
        try:
            return await js.key_value(subjects.BUCKET_NETMAPS)
        except (
            nats.js.errors.BucketNotFoundError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
        ):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def watch_map(
    nc: NATS,
    peer_id: str,
    state: MapState,
    *,
    log: BoundLogger,
    metrics: ServiceMetrics,
) -> None:
    """Feed ``state`` from KV until cancelled.

    Watches again after any failure and after every NATS reconnect (a KV watch can stay
    silent for many seconds after nats-server came back; a disabled peer must stop its SSH
    server within seconds).
    """
    key = subjects.netmap_key(peer_id)

    def bad(k: str, e: WireError) -> None:
        metrics.bad_messages.labels(endpoint="netmap", reason="invalid").inc()
        log.warning("ignored an undecodable network map", extra={"key": k, "error": str(e)})

    kv = TypedKV(await _bucket(nc.jetstream()), NetworkMap, on_bad_value=bad)
    async for event in kv.follow(key, nc):  # restarts after failures and NATS reconnects
        if event.initial_done:
            continue
        if event.value is None:
            log.warning("network map deleted: this peer was removed")
            state.drop()
        elif state.offer(event.value):
            log.info(
                "network map applied",
                extra={"serial": event.value.serial, "ssh": event.value.peer.ssh_enabled},
            )
