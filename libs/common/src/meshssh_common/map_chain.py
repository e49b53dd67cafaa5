"""Whole maps from what ``peer.<id>`` holds: a map, or a delta against ``snap.<id>``.

A change that reaches 1,000 peers used to send each of them its whole map again (tens of KiB,
most of it unchanged: the remote peers, the source peers). Now policy writes a peer's whole
map now and then as a *snapshot* (``snap.<id>.<hash>``, immutable, named by its content
hash) and, for each change, a small
:class:`~meshssh_common.wire.MapDelta` to ``peer.<id>``: the fields that differ from that
snapshot. Both are signed. A peer follows ``peer.<id>`` as before; :class:`MapChain` turns
each document into the whole map:

- a :class:`~meshssh_common.wire.NetworkMap` is whole already;
- a delta applies to the snapshot it names by serial *and* by the hash of its signed payload
  (:func:`snapshot_hash`): the held snapshot when it is that one, otherwise the snapshot is
  read once (a direct get of ``snap.<id>.<hash>``; a peer may read only its own), verified,
  and kept for the deltas that follow.

A delta whose snapshot is not stored (any more) raises :class:`Unresolved`: the snapshot moved
on, so a newer document is on its way to ``peer.<id>`` (policy writes a snapshot before the
delta that names it, and removes it only after ``peer.<id>`` names a newer one); the follower
reads the key again shortly. A snapshot that does
not verify raises :class:`~meshssh_common.signed_doc.Refused`. Either way the old map stays in
force (fail closed). Deltas are cumulative, so a peer never needs more than the snapshot and
the newest delta.

Example::

    chain = MapChain(verifier, fetch_snapshot=lambda h: direct_get(nc, bucket, snap_key(h)))
    netmap = await chain.resolve(doc)        # doc: NetworkMap | MapDelta, as KeyWatch read it
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import cast

from meshssh_common import codec
from meshssh_common.errors import WireError
from meshssh_common.signed_doc import Refused, Verifier
from meshssh_common.wire import MapDelta, MapDoc, NetworkMap

__all__ = ["MAP_DOC", "MapChain", "Unresolved", "decode_doc", "snapshot_hash"]

MAP_DOC = cast("type[MapDoc]", MapDoc)
"""``MapDoc`` as a type argument (``KeyWatch(..., MAP_DOC)``): a union is no ``type[T]``."""


class Unresolved(Exception):
    """A delta's snapshot is not the one stored under ``snap.<id>`` (or none is)."""


def snapshot_hash(payload: bytes) -> bytes:
    """What a delta names its snapshot by: BLAKE2b-256 of the snapshot's signed payload."""
    return hashlib.blake2b(payload, digest_size=32).digest()


def decode_doc(payload: bytes) -> MapDoc:
    """``payload`` decoded as what ``peer.<id>`` may hold.

    Raises:
        WireError: it is neither a map nor a delta.
    """
    return codec.decode(payload, MAP_DOC)


class MapChain:
    """The snapshot a peer's deltas apply to, and the resolution of each document."""

    def __init__(
        self, verifier: Verifier, *, fetch_snapshot: Callable[[bytes], Awaitable[bytes | None]]
    ) -> None:
        self._verifier = verifier
        self._fetch = fetch_snapshot
        self._base: tuple[NetworkMap, bytes] | None = None  # the snapshot and its hash
        self.snapshot_reads = 0

    @property
    def base_serial(self) -> int:
        """The serial of the snapshot held (0: none)."""
        return self._base[0].serial if self._base is not None else 0

    async def resolve(self, doc: MapDoc) -> NetworkMap:
        """The whole map ``doc`` stands for.

        Raises:
            Unresolved: ``doc`` is a delta whose snapshot is not stored.
            Refused: the stored snapshot does not verify or decode.
            Exception: what ``fetch_snapshot`` raises when NATS is away.
        """
        if isinstance(doc, NetworkMap):
            return doc
        base = self._base
        if base is None or base[0].serial != doc.base_serial or base[1] != doc.base_hash:
            base = await self._read_snapshot(doc)
        return doc.apply(base[0])

    async def _read_snapshot(self, delta: MapDelta) -> tuple[NetworkMap, bytes]:
        data = await self._fetch(delta.base_hash)
        self.snapshot_reads += 1
        if data is None:
            raise Unresolved(f"map {delta.serial}: no snapshot is stored")
        payload = self._verifier.open_bytes(data)
        try:
            snapshot = codec.decode(payload, NetworkMap)
        except WireError as e:
            raise Refused("undecodable", f"map snapshot: {e}") from e
        digest = snapshot_hash(payload)
        if snapshot.serial > self.base_serial:
            self._base = (snapshot, digest)  # newer than the delta's: the next one names it
        if snapshot.serial != delta.base_serial or digest != delta.base_hash:
            raise Unresolved(
                f"map {delta.serial} applies to snapshot {delta.base_serial}; "
                f"{snapshot.serial} is stored"
            )
        return (snapshot, digest)
