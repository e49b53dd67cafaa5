"""Writing network maps to KV ``meshssh-netmaps``: only on change, never backwards (SPEC §4).

Every write is a compare-and-set on the key's revision with ``serial`` = the stored serial
+ 1, so serials strictly increase across restarts and replicas and two writers can never both
win. A map is written only when its content (everything but ``serial`` and
``state_revisions``) differs from the stored one. Each map carries the state revisions it was
computed from; a replica whose state is not at least as new as the stored map's, in every
bucket, does not overwrite it (it is behind, and will recompute once it caught up). So a
slow replica can never bring back access a faster one already revoked.

What ``peer.<id>`` gets is a :class:`~meshssh_common.wire.MapDelta`: the fields that differ
from the peer's snapshot, ``snap.<id>.<hash>`` (:mod:`meshssh_common.map_chain`). A change
that edits one policy's ports sends each of the 1,000 peers it reaches its new rules (a few
KiB), not its whole map again. A new snapshot is written (and the delta then names it, with no
fields of its own) when this replica does not know the peer's snapshot (its first write
after a start, or a peer another replica wrote last) or when the delta would be more than
half the snapshot's size (deltas are cumulative). Snapshots are immutable and named by their
hash: one is written before the delta that names it, and erased only once ``peer.<id>`` names
a newer one, so a stored delta's snapshot is always there (a replica that stops in between
leaves at most one unnamed snapshot behind).

Example::

    outcome = await publisher.publish("p1", compiler.compile("p1"), dict(state.view))
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors

from meshssh_common import codec, subjects
from meshssh_common.errors import Conflict, MeshError, Unavailable, WireError
from meshssh_common.kv import Encoded, TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.map_chain import snapshot_hash
from meshssh_common.signed_batch import BatchSigner
from meshssh_common.wire import MapDelta, MapDoc, NetworkMap, SignedDoc
from meshssh_common.wire.netmap import DELTA_FIELDS
from meshssh_policy.digest import Digester, Parts, content_digest, of_parts
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.state import dominates

__all__ = ["Base", "Known", "Outcome", "Publisher", "content_digest"]

_ATTEMPTS = 5
_READ_RETRIES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
_DELTA_SHARE = 0.5  # a delta bigger than this share of its snapshot: write a new snapshot


class Outcome(enum.StrEnum):
    """What :meth:`Publisher.publish` did (the ``result`` metric label)."""

    PUBLISHED = "published"
    UNCHANGED = "unchanged"
    STALE = "stale"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Base:
    """A snapshot this replica wrote: what a delta is made against."""

    serial: int
    hash: bytes  # snapshot_hash of its payload
    parts: Parts  # its content fields' digests
    size: int  # its payload's bytes


@dataclass(frozen=True, slots=True)
class Known:
    """What is stored under a peer's key, as far as this replica knows."""

    revision: int
    serial: int
    digest: bytes
    view: dict[str, int]
    snapshot: bytes = b""  # the hash of the snapshot the stored delta names (b"": none)
    base: Base | None = None  # that snapshot, when this replica wrote it


class Publisher:
    """Publishes maps for one replica; remembers what it last saw per key."""

    def __init__(self, maps: TypedKV[MapDoc], metrics: PolicyMetrics, log: BoundLogger):
        self.maps = maps
        self.metrics = metrics
        self.log = log
        self.known: dict[str, Known] = {}
        # the publish workers' maps, signed together per event-loop turn (signed_batch.py)
        self.batch = BatchSigner(maps.signer) if maps.signer is not None else None

    async def load(self) -> None:
        """Learn what every key holds now (at start, so unchanged maps are not rewritten)."""
        async for ev in self.maps.watch(subjects.NETMAP_ALL, initial_only=True):
            if ev.value is not None:
                self.known[ev.key] = self._known(ev.value, ev.revision)

    @staticmethod
    def _known(doc: MapDoc, revision: int) -> Known:
        if isinstance(doc, MapDelta):
            view = dict(doc.state_revisions)
            return Known(revision, doc.serial, doc.content, view, snapshot=doc.base_hash)
        return Known(revision, doc.serial, content_digest(doc), dict(doc.state_revisions))

    async def _fetch(self, key: str) -> Known | None:
        entry = await self.maps.get(key)
        if entry is None:
            self.known.pop(key, None)
            return None
        known = self._known(entry.value, entry.revision)
        self.known[key] = known
        return known

    async def current(self, peer_id: str) -> NetworkMap | None:
        """The whole map stored for ``peer_id`` now (read from KV; a delta is applied).

        Raises:
            WireError: what is stored does not decode or verify, or names no stored snapshot.
            Unavailable: JetStream did not answer.
        """
        for delay in _READ_RETRIES:
            entry = await self.maps.get(subjects.netmap_key(peer_id))
            if entry is None:
                return None
            doc = entry.value
            if isinstance(doc, NetworkMap):
                return doc
            snap = await self.maps.get(subjects.netmap_snapshot_key(peer_id, doc.base_hash))
            if snap is not None and isinstance(snap.value, NetworkMap):
                return doc.apply(snap.value)
            # R3: a direct get may reach a replica behind the leader (an older delta whose
            # snapshot is gone, or a snapshot not stored there yet): read both again
            await asyncio.sleep(delay)
        raise Unavailable(f"the snapshot of the map of {peer_id} is not stored")

    async def publish(
        self,
        peer_id: str,
        content: NetworkMap,
        view: dict[str, int],
        *,
        parts: Parts | None = None,
    ) -> Outcome:
        """Write ``content`` (computed from state ``view``) unless unchanged or stale.

        ``parts``: its content fields' digests, when the caller has them (a batch's
        :class:`~meshssh_policy.digest.Digester` hashes shared parts once).
        """
        try:
            parts = parts or Digester().parts(content)
            outcome = await self._publish(peer_id, content, view, parts)
        except MeshError as e:
            self.log.warning("network map read failed", extra={"peer": peer_id, "error": repr(e)})
            outcome = Outcome.ERROR
        self.metrics.maps.labels(result=outcome.value).inc()
        return outcome

    async def _publish(
        self, peer_id: str, content: NetworkMap, view: dict[str, int], parts: Parts
    ) -> Outcome:
        key = subjects.netmap_key(peer_id)
        digest = of_parts(parts)
        known = self.known.get(key)
        for _ in range(_ATTEMPTS):
            if known is not None and known.digest == digest:
                return Outcome.UNCHANGED
            if known is not None and not dominates(view, known.view):
                return Outcome.STALE
            serial = known.serial + 1 if known is not None else 1
            started = time.perf_counter()
            try:
                base = await self._base(peer_id, known) if known is not None else None
                data = None
                if base is not None:
                    data = await self._delta(content, parts, base, serial, view)
                written = 0  # a new snapshot's bytes
                if base is None or data is None:  # no snapshot to build on, or a delta too big
                    base, data = await self._snapshot(peer_id, content, parts, serial, view)
                    written = base.size
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
            self.metrics.map_bytes.observe(len(data) + written)
            self.metrics.map_writes.labels(kind="snapshot" if written else "delta").inc()
            self.known[key] = Known(int(revision), serial, digest, dict(view), base.hash, base)
            if known is not None and known.snapshot and known.snapshot != base.hash:
                await self._erase(peer_id, known.snapshot)
            return Outcome.PUBLISHED
        self.log.warning("network map write kept conflicting", extra={"peer": peer_id})
        return Outcome.ERROR

    async def _base(self, peer_id: str, known: Known) -> Base | None:
        """The snapshot the stored delta names, read from KV when this replica did not write it.

        After a restart, or for a peer another replica wrote last, the next change is then a
        delta too, instead of a new snapshot that every such peer would have to read again.
        None (a new snapshot is written) when it cannot be read, is not the one named, or was
        signed with a key the signer has since rotated away from.
        """
        if known.base is not None or not known.snapshot:
            return known.base
        key = subjects.netmap_snapshot_key(peer_id, known.snapshot)
        try:
            entry = await self.maps.kv.get(key)
            doc = codec.decode(entry.value or b"", SignedDoc)
            snapshot = codec.decode(doc.payload, NetworkMap)
        except (nats.errors.Error, nats.js.errors.Error, WireError, TimeoutError):
            return None  # gone, or unreadable: a new snapshot replaces it
        if snapshot_hash(doc.payload) != known.snapshot:  # the hash our signed delta names
            return None
        signer = self.maps.signer
        if signer is not None and doc.key_id != signer.key_id:
            return None  # signed before a rotation: peers that pin only the new key need a new one
        parts = Digester().parts(snapshot)
        return Base(snapshot.serial, known.snapshot, parts, len(doc.payload))

    async def _seal(self, payload: bytes) -> Encoded:
        """``payload`` signed (with the other maps of this turn) and encoded as stored."""
        if self.batch is None:
            return Encoded(payload)
        return Encoded(codec.encode(await self.batch.sign(payload)))

    async def _delta(
        self, content: NetworkMap, parts: Parts, base: Base, serial: int, view: dict[str, int]
    ) -> Encoded | None:
        """``content`` as a signed delta against ``base``; None when it would be too big."""
        changed = {
            name: getattr(content, name)
            for name, part, was in zip(DELTA_FIELDS, parts, base.parts, strict=True)
            if part != was
        }
        delta = MapDelta(
            serial=serial,
            base_serial=base.serial,
            base_hash=base.hash,
            content=of_parts(parts),
            state_revisions=view,
            **changed,
        )
        payload = codec.encode(delta)
        return await self._seal(payload) if len(payload) <= base.size * _DELTA_SHARE else None

    async def _snapshot(
        self, peer_id: str, content: NetworkMap, parts: Parts, serial: int, view: dict[str, int]
    ) -> tuple[Base, Encoded]:
        """Store ``content`` as a new snapshot; returns it and the (empty) delta naming it."""
        snapshot = msgspec.structs.replace(content, serial=serial, state_revisions=view)
        payload = codec.encode(snapshot)
        base = Base(serial, snapshot_hash(payload), parts, len(payload))
        await self.maps.put(
            subjects.netmap_snapshot_key(peer_id, base.hash), await self._seal(payload)
        )
        empty = MapDelta(
            serial=serial,
            base_serial=serial,
            base_hash=base.hash,
            content=of_parts(parts),
            state_revisions=view,
        )
        return base, await self._seal(codec.encode(empty))

    async def _erase(self, peer_id: str, snapshot: bytes) -> None:
        """Remove a snapshot no stored delta names any more (best effort: garbage if it fails)."""
        with contextlib.suppress(Unavailable):
            await self.maps.erase(subjects.netmap_snapshot_key(peer_id, snapshot))
