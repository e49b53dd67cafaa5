"""The relay's view of its peer's network map: watched from KV, applied only when newer.

The relay is a separate process and learns everything from NATS: it watches the key
``peer.<id>`` of ``meshssh-netmaps`` and keeps the snapshot with the highest serial. A delete
(the peer was removed) clears the map, which refuses every connection, and resets the serial so
that a re-registered peer's fresh maps apply. Listeners run after each change.

Example::

    holder = MapHolder()
    holder.on_change(lambda m: log.info("serial %s", m and m.serial))
    await watch_netmap(ctx.nc, "p1", holder, log=log, metrics=metrics)
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

__all__ = ["MapHolder", "watch_netmap"]

Listener = Callable[[NetworkMap | None], None]
_RECONNECT_POLL = 0.5


class MapHolder:
    """The current map of this peer (None until the first one, or after a delete)."""

    def __init__(self) -> None:
        self.current: NetworkMap | None = None
        self.serial = 0
        self.received = asyncio.Event()  # set once the watch has reported what KV holds
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(map)`` after every applied change (the map is None when removed)."""
        self._listeners.append(listener)

    def apply(self, netmap: NetworkMap) -> bool:
        """Take ``netmap`` if its serial is higher than the held one; returns whether it did."""
        if netmap.serial <= self.serial:
            return False
        self.current = netmap
        self.serial = netmap.serial
        self._notify()
        return True

    def clear(self) -> None:
        """The map was deleted: refuse everything until a new one arrives."""
        self.current = None
        self.serial = 0
        self._notify()

    @property
    def ssh_enabled(self) -> bool:
        """Whether the management plane has SSH on for this peer."""
        return self.current is not None and self.current.peer.ssh_enabled

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.current)


async def _open_existing(js: JetStreamContext, log: BoundLogger) -> KeyValue:
    # A peer never creates the bucket (production credentials could not): it waits for the
    # management plane to have made it.
    delay = 0.2
    warned = False
    while True:
        try:
            return await js.key_value(subjects.BUCKET_NETMAPS)
        except (
            nats.js.errors.BucketNotFoundError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
        ) as e:
            if not warned:
                log.warning("waiting for the netmaps bucket", extra={"error": repr(e)})
                warned = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def watch_netmap(
    nc: NATS,
    peer_id: str,
    holder: MapHolder,
    *,
    log: BoundLogger,
    metrics: ServiceMetrics,
) -> None:
    """Feed ``holder`` from the peer's KV key until cancelled.

    The watch starts again after an error, and after every NATS reconnect: a KV watch can
    stay silent for many seconds after nats-server came back, and a disabled peer must stop
    serving within seconds. The first value of a fresh watch is the current map, applied only
    if newer.
    """
    key = subjects.netmap_key(peer_id)

    def bad_value(k: str, e: WireError) -> None:
        metrics.bad_messages.labels(endpoint="netmap", reason="invalid").inc()
        log.warning("ignored an undecodable network map", extra={"key": k, "error": str(e)})

    kv = TypedKV(await _open_existing(nc.jetstream(), log), NetworkMap, on_bad_value=bad_value)
    async for event in kv.follow(key, nc):  # restarts after failures and NATS reconnects
        if event.initial_done:
            holder.received.set()
        elif event.value is None:
            log.warning("network map deleted; refusing every connection")
            holder.clear()
        elif holder.apply(event.value):
            log.info(
                "network map applied",
                extra={"serial": event.value.serial, "ssh": event.value.peer.ssh_enabled},
            )
