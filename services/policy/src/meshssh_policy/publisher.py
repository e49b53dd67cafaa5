"""Writing network maps to KV ``meshssh-netmaps``: only on change, never backwards (SPEC §4).

Every write is a compare-and-set on the key's revision with ``serial`` = the stored serial
+ 1, so serials strictly increase across restarts and replicas and two writers can never both
win. A map is written only when its content (everything but ``serial`` and
``state_revisions``) differs from the stored one. Each map carries the state revisions it was
computed from; a replica whose state is not at least as new as the stored map's, in every
bucket, does not overwrite it (it is behind, and will recompute once it caught up). So a
slow replica can never bring back access a faster one already revoked.

Example::

    outcome = await publisher.publish("p1", compiler.compile("p1"), dict(state.view))
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import msgspec

from meshssh_common import subjects
from meshssh_common.errors import Conflict, MeshError, Unavailable
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import NetworkMap
from meshssh_policy.digest import content_digest
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.state import dominates

__all__ = ["Known", "Outcome", "Publisher", "content_digest"]

_ATTEMPTS = 5


class Outcome(enum.StrEnum):
    """What :meth:`Publisher.publish` did (the ``result`` metric label)."""

    PUBLISHED = "published"
    UNCHANGED = "unchanged"
    STALE = "stale"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Known:
    """What is stored under a peer's key, as far as this replica knows."""

    revision: int
    serial: int
    digest: bytes
    view: dict[str, int]


class Publisher:
    """Publishes maps for one replica; remembers what it last saw per key."""

    def __init__(self, maps: TypedKV[NetworkMap], metrics: PolicyMetrics, log: BoundLogger):
        self.maps = maps
        self.metrics = metrics
        self.log = log
        self.known: dict[str, Known] = {}

    async def load(self) -> None:
        """Learn what every key holds now (at start, so unchanged maps are not rewritten)."""
        async for ev in self.maps.watch(subjects.NETMAP_ALL, initial_only=True):
            if ev.value is not None:
                self.known[ev.key] = self._known(ev.value, ev.revision)

    @staticmethod
    def _known(netmap: NetworkMap, revision: int) -> Known:
        return Known(revision, netmap.serial, content_digest(netmap), dict(netmap.state_revisions))

    async def _fetch(self, key: str) -> Known | None:
        entry = await self.maps.get(key)
        if entry is None:
            self.known.pop(key, None)
            return None
        known = self._known(entry.value, entry.revision)
        self.known[key] = known
        return known

    async def current(self, peer_id: str) -> NetworkMap | None:
        """The map stored for ``peer_id`` now (read from KV)."""
        entry = await self.maps.get(subjects.netmap_key(peer_id))
        return entry.value if entry is not None else None

    async def publish(
        self,
        peer_id: str,
        content: NetworkMap,
        view: dict[str, int],
        *,
        digest: bytes | None = None,
    ) -> Outcome:
        """Write ``content`` (computed from state ``view``) unless unchanged or stale.

        ``digest``: its :func:`content_digest`, when the caller has it (a batch's
        :class:`~meshssh_policy.digest.Digester` hashes shared parts once).
        """
        try:
            outcome = await self._publish(peer_id, content, view, digest or content_digest(content))
        except MeshError as e:
            self.log.warning("network map read failed", extra={"peer": peer_id, "error": repr(e)})
            outcome = Outcome.ERROR
        self.metrics.maps.labels(result=outcome.value).inc()
        return outcome

    async def _publish(
        self, peer_id: str, content: NetworkMap, view: dict[str, int], digest: bytes
    ) -> Outcome:
        key = subjects.netmap_key(peer_id)
        known = self.known.get(key)
        for _ in range(_ATTEMPTS):
            if known is not None and known.digest == digest:
                return Outcome.UNCHANGED
            if known is not None and not dominates(view, known.view):
                return Outcome.STALE
            serial = known.serial + 1 if known is not None else 1
            netmap = msgspec.structs.replace(content, serial=serial, state_revisions=view)
            data = self.maps.encode(netmap)
            started = time.perf_counter()
            try:
                if known is None:
                    revision = await self.maps.create(key, data)
                else:
                    revision = await self.maps.update(key, data, last=known.revision)
            except Conflict:
                known = await self._fetch(key)  # another writer got there first: look again
                continue
            except Unavailable as e:
                self.log.warning(
                    "network map write failed", extra={"peer": peer_id, "error": repr(e)}
                )
                return Outcome.ERROR
            self.metrics.publish_seconds.observe(time.perf_counter() - started)
            self.metrics.map_bytes.observe(len(data))
            self.known[key] = Known(int(revision), serial, digest, dict(view))
            return Outcome.PUBLISHED
        self.log.warning("network map write kept conflicting", extra={"peer": peer_id})
        return Outcome.ERROR
