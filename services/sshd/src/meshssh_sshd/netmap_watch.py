"""This peer's network map, followed live from KV ``meshssh-netmaps`` (SPEC §4, §5).

The watcher reads only its own key (``peer.<id>``), applies only a map whose ``serial`` is
higher than the one it holds, and calls ``on_change(old, new)`` after each applied map so
that live sessions can be re-checked (revocation). A deleted key means the peer was removed:
the map becomes None, which refuses everything (fail closed). A watch that breaks (NATS
restart) is re-opened; meanwhile the last applied map stays in force.

Example::

    maps = NetmapWatch(ctx.nc, ctx.js, "p1", metrics, log, on_change=revoker.on_map)
    tg.create_task(maps.run())
    await maps.wait_initial(5.0)
    maps.current        # NetworkMap | None
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshssh_common import subjects
from meshssh_common.errors import MeshError, WireError
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.wire import NetworkMap, RemotePeer, SourcePeer
from meshssh_sshd.cancellation import raise_if_cancelling

__all__ = ["MapChange", "NetmapWatch"]

MapChange = Callable[[NetworkMap | None, NetworkMap | None], None]
_RETRY = 1.0


class NetmapWatch:
    """Holds the current map of one peer and follows its changes."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        peer_id: str,
        metrics: ServiceMetrics,
        log: BoundLogger,
        *,
        on_change: MapChange | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._key = subjects.netmap_key(peer_id)
        self._metrics = metrics
        self._log = log
        self._on_change = on_change
        self._initial = asyncio.Event()
        self.current: NetworkMap | None = None
        self._by_address: tuple[NetworkMap, dict[str, SourcePeer | RemotePeer]] | None = None

    def peer_at(self, ip: str) -> SourcePeer | RemotePeer | None:
        """The peer of the current map whose mesh address is ``ip`` (sources first), if any."""
        netmap = self.current
        if netmap is None:
            return None
        if self._by_address is None or self._by_address[0] is not netmap:
            found: dict[str, SourcePeer | RemotePeer] = {}
            peers: list[SourcePeer | RemotePeer] = [*netmap.remote_peers, *netmap.source_peers]
            for peer in peers:
                with contextlib.suppress(ValueError):
                    found[str(ipaddress.ip_address(peer.mesh_ip))] = peer
            self._by_address = (netmap, found)
        return self._by_address[1].get(ip)

    def set_on_change(self, on_change: MapChange) -> None:
        """Set the callback run after each applied map (set once, before :meth:`run`)."""
        self._on_change = on_change

    async def wait_initial(self, timeout: float) -> bool:
        """Wait until the stored map (or its absence) is known; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._initial.wait()
                return True
        return False

    def apply(self, netmap: NetworkMap | None) -> bool:
        """Apply ``netmap`` if it is newer (or a deletion); True when it was applied."""
        old = self.current
        if netmap is not None and old is not None and netmap.serial <= old.serial:
            self._log.info(
                "ignored network map with an old serial",
                extra={"serial": netmap.serial, "current": old.serial},
            )
            return False
        if netmap is None and old is None:
            return False
        self.current = netmap
        if netmap is None:
            self._log.warning("network map deleted: refusing every connection")
        else:
            self._log.info(
                "network map applied",
                extra={"serial": netmap.serial, "rules": len(netmap.firewall_rules)},
            )
        if self._on_change is not None:
            try:
                self._on_change(old, netmap)
            except Exception:
                self._log.exception("network map change handler failed")
        return True

    def _bad_value(self, key: str, error: WireError) -> None:
        self._metrics.bad_messages.labels(endpoint="netmap", reason="invalid").inc()
        self._log.warning("ignored invalid network map", extra={"key": key, "error": str(error)})

    async def run(self) -> None:
        """Follow the map until cancelled, re-opening the watch when it breaks."""
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except (MeshError, Exception) as e:  # any broken watch is re-opened
                self._log.warning("network map watch broke; retrying", extra={"error": repr(e)})
            raise_if_cancelling()
            await asyncio.sleep(_RETRY)

    async def _watch(self) -> None:
        kv = await open_bucket(self._js, subjects.BUCKET_NETMAPS)
        typed = TypedKV(kv, NetworkMap, on_bad_value=self._bad_value)
        # follow(): restarts after NATS reconnects, so revocations are not held up by a watch
        # that stays silent after nats-server came back.
        async for event in typed.follow(self._key, self._nc):
            if event.initial_done:
                self._initial.set()
                continue
            self.apply(event.value)
            self._initial.set()
