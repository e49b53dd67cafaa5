"""One peer's network map, followed live from KV ``meshssh-netmaps`` (SPEC §4, §5).

The single map follower of the house: the agent, sshd and the relay each hold one
:class:`PeerMap`. It reads only its own key (``peer.<id>``) and applies a snapshot only when
its ``serial`` is higher than the one it holds, so stale snapshots and the values a watch
replays after a resync are ignored. A deleted key means the peer was removed: the map becomes
None (which refuses everything: fail closed) and the serial goes back to 0, so a re-registered
peer's fresh maps apply. Listeners run after each applied change with ``(old, new)``.

:meth:`PeerMap.follow` reads the key with a :class:`~meshssh_common.key_watch.KeyWatch`:
a direct get plus a plain subscription, no JetStream consumer and nothing a peer's permissions
must not allow. It never creates the bucket (a peer's credentials could not, and a creator
would pick the wrong replicas): until the management plane has made it, the reads fail and
are retried. The key is read again after every NATS reconnect (a disabled peer must stop
within seconds) and every ``resync_every`` seconds: a resync, whose replayed serial is not
applied twice.

``peer.<id>`` holds a whole map or a delta against the snapshot in ``snap.<id>``; a
:class:`~meshssh_common.map_chain.MapChain` makes the whole map (reading the snapshot when a
delta names one this peer does not hold). A delta it cannot resolve yet is read again in 2 s.

The KV value is a signed document (:mod:`meshssh_common.signed_doc`): it applies only when its
signature verifies with a key pinned in ``pins`` (``<state-dir>/pins.json``, re-read when it
changes). A refused map is counted in ``signed_doc_refused{kind="map"}`` and logged, and the
old map stays in force. Without a pins file nothing verifies: no map from KV ever applies
(fail closed), which is said once at start. :meth:`offer` takes the registration reply's map
as is: it came over the management plane's authenticated REST channel, not the bus.

Example::

    maps = PeerMap(log=log, metrics=metrics, pins=state_dir / "pins.json")
    maps.on_change(lambda old, new: revoker.on_map(old, new))
    maps.offer(reply.netmap)                 # e.g. the registration reply, before the watch
    tg.create_task(maps.follow(nc, "p1"))    # the peer id may be learnt after construction
    await maps.wait_received(5.0)
    maps.current                             # NetworkMap | None
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.cancellation import raise_if_cancelling
from meshssh_common.errors import BadReason, Unavailable, WireError
from meshssh_common.key_watch import KeyWatch, Reconnects, direct_get
from meshssh_common.logs import BoundLogger
from meshssh_common.map_chain import MAP_DOC, MapChain, Unresolved
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.signed_doc import PinnedVerifier, Refused
from meshssh_common.wire import MapDoc, NetworkMap, RemotePeer, SourcePeer

__all__ = ["MapListener", "PeerMap"]

_REREAD = 2.0  # seconds before a delta whose snapshot could not be read is read again
_SNAPSHOT_RETRIES = (0.02, 0.05, 0.1, 0.2, 0.4)  # seconds between reads of a missing snapshot
MapListener = Callable[[NetworkMap | None, NetworkMap | None], None]
"""Called with ``(old, new)`` after each applied change; ``new`` is None when removed."""


class PeerMap:
    """The current map of one peer, its serial, and the listeners of its changes."""

    def __init__(self, *, log: BoundLogger, metrics: ServiceMetrics, pins: Path | None) -> None:
        self.current: NetworkMap | None = None
        self.serial = 0
        self.received = asyncio.Event()  # set once a read has reported what KV holds
        self._log = log
        self._metrics = metrics
        self._listeners: list[MapListener] = []
        self._by_address: tuple[NetworkMap, dict[str, SourcePeer | RemotePeer]] | None = None
        self.pins = pins

    @property
    def ssh_enabled(self) -> bool:
        """Whether the management plane has SSH on for this peer."""
        return self.current is not None and self.current.peer.ssh_enabled

    def on_change(self, listener: MapListener) -> None:
        """Call ``listener(old, new)`` after every applied change (``new`` None: removed)."""
        self._listeners.append(listener)

    def offer(self, netmap: NetworkMap) -> bool:
        """Apply ``netmap`` if its serial is higher than the held one; returns whether it did."""
        if netmap.serial <= self.serial:
            if netmap.serial < self.serial:
                self._log.info(
                    "ignored network map with an old serial",
                    extra={"serial": netmap.serial, "current": self.serial},
                )
            return False  # an equal serial is the same map, replayed by a resync
        old, self.current, self.serial = self.current, netmap, netmap.serial
        self._log.info(
            "network map applied",
            extra={
                "serial": netmap.serial,
                "ssh": netmap.peer.ssh_enabled,
                "rules": len(netmap.firewall_rules),
            },
        )
        self._notify(old)
        return True

    def drop(self) -> bool:
        """The map was deleted: no map, serial back to 0. Returns whether anything changed."""
        if self.current is None and self.serial == 0:
            return False
        old, self.current, self.serial = self.current, None, 0
        self._log.warning("network map deleted: this peer was removed; refusing everything")
        self._notify(old)
        return True

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

    async def wait_received(self, timeout: float) -> bool:
        """Wait until the stored map (or its absence) is known; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.received.wait()
                return True
        return False

    async def follow(
        self,
        nc: NATS,
        peer_id: str,
        *,
        resync_every: float = 30.0,
        reconnects: Reconnects | None = None,
    ) -> None:
        """Feed this map from ``peer_id``'s key in KV until cancelled (see the module docstring).

        Args:
            nc: the connection to read with (its identity may read only this key).
            peer_id: whose map to follow.
            resync_every: seconds between the safety-net reads of the key.
            reconnects: a shared reconnect poller (many maps on one connection, benches).

        Raises:
            Exception: whatever :meth:`KeyWatch.follow` does not retry (a bug, not an outage).
        """
        verifier = PinnedVerifier("map", self.pins or Path("/nonexistent/pins.json"))
        if not verifier.pinned:
            self._log.error(
                "no map signing key pinned (--pins unset or its file missing): no network map "
                "from the bus will be applied until the pins file holds one",
                extra={"pins": str(self.pins) if self.pins else ""},
            )
        watch = KeyWatch[MapDoc](
            nc,
            subjects.BUCKET_NETMAPS,
            subjects.netmap_key(peer_id),
            MAP_DOC,
            version=_serial,
            on_bad_value=self._bad_value,
            resync_every=resync_every,
            reconnects=reconnects,
            verifier=verifier,
        )

        async def snapshot(base_hash: bytes) -> bytes | None:
            key = subjects.netmap_snapshot_key(peer_id, base_hash)
            return await direct_get(nc, subjects.BUCKET_NETMAPS, key)

        chain = MapChain(verifier, fetch_snapshot=snapshot)
        async for event in watch.follow(on_retry=self._watch_broke):
            if event.synced:
                self.received.set()
            elif event.value is None:
                self.drop()
            elif event.value.serial > self.serial:
                netmap = await self._resolve(chain, event.value, subjects.netmap_key(peer_id))
                if netmap is None:
                    watch.forget(reread_in=min(_REREAD, resync_every))
                else:
                    self.offer(netmap)

    async def _resolve(self, chain: MapChain, doc: MapDoc, key: str) -> NetworkMap | None:
        """The whole map ``doc`` stands for; None (logged, counted) when it cannot be had now.

        A snapshot that is not there is looked for again a few times at once: with R3
        buckets a direct get may be answered by a replica that has not stored it yet, although
        policy wrote it before the delta that named it.
        """
        for delay in (*_SNAPSHOT_RETRIES, None):
            try:
                return await chain.resolve(doc)
            except Refused as e:
                self._bad_value(key, e)
            except Unresolved as e:
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
                self._log.info("network map delta waits for its snapshot", extra={"why": str(e)})
            except (nats.errors.Error, TimeoutError, OSError, Unavailable) as e:
                raise_if_cancelling()
                self._watch_broke(e)
            return None
        return None

    def _notify(self, old: NetworkMap | None) -> None:
        for listener in self._listeners:
            try:
                listener(old, self.current)
            except Exception:
                self._log.exception("network map listener failed")

    def _bad_value(self, key: str, error: WireError) -> None:
        if isinstance(error, Refused):
            self._metrics.signed_doc_refused.labels(kind="map", reason=error.why).inc()
            self._log.warning(
                "refused a network map: its signature does not verify with the pinned keys; "
                "the old map stays in force",
                extra={"key": key, "reason": error.why, "error": str(error)},
            )
            return
        self._metrics.bad_messages.labels(endpoint="netmap", reason=BadReason.INVALID).inc()
        self._log.warning(
            "ignored an undecodable network map", extra={"key": key, "error": str(error)}
        )

    def _watch_broke(self, error: Exception) -> None:
        self._log.warning("network map read failed; retrying", extra={"error": repr(error)})


def _serial(doc: MapDoc) -> int:
    return doc.serial
