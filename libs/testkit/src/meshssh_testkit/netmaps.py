"""Network maps for tests: build one with a few rules, store it where peers watch it.

Tests that exercise a peer before (or without) the management plane write the peer's map into
the ``meshssh-netmaps`` bucket themselves, exactly as meshssh-policy publishes it: signed (by
:func:`meshssh_testkit.signing.map_signer` unless told otherwise), so the peer processes need
``--pins`` (:func:`meshssh_testkit.signing.write_test_pins`).

Tests that read what meshssh-policy published get whole maps from :func:`stored_map` (a peer's
reads: the key, then the snapshot a delta names) or from a :class:`MapAssembler` fed by a
watch of the whole bucket (snapshots come before the deltas that name them).

Example::

    await put_map(nc, make_map(1, peer_id="p1", mesh_ip="127.0.0.2", sources=["127.0.0.3/32"]))
    netmap = await stored_map(nc, "p1", Verifier("map", pins))
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.key_watch import direct_get
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.map_chain import MAP_DOC, MapChain, Unresolved
from meshssh_common.signed_doc import Signer, Verifier
from meshssh_common.wire import (
    FirewallRule,
    MapDoc,
    NetworkMap,
    PeerConfig,
    RemotePeer,
    SignedDoc,
)
from meshssh_testkit.signing import map_signer

__all__ = ["MapAssembler", "make_map", "put_map", "stored_map"]


def make_map(
    serial: int,
    *,
    peer_id: str = "p1",
    mesh_ip: str = "127.0.0.2",
    mesh_prefix: str = "127.0.0.0/8",
    ssh_enabled: bool = True,
    sources: Sequence[str] = ("127.0.0.3/32",),
    ports: Sequence[str] = ("22", "22022"),
    remote_peers: Sequence[RemotePeer] = (),
) -> NetworkMap:
    """A map for ``peer_id`` whose inbound rules accept ``sources`` on TCP ``ports``."""
    rules = tuple(
        FirewallRule(
            sources=tuple(sources), protocol="tcp", action="accept", policy_id="pol", port=port
        )
        for port in ports
        if sources
    )
    peer = PeerConfig(
        id=peer_id, name=peer_id, mesh_ip=mesh_ip, mesh_prefix=mesh_prefix, ssh_enabled=ssh_enabled
    )
    return NetworkMap(
        serial=serial, peer=peer, firewall_rules=rules, remote_peers=tuple(remote_peers)
    )


async def put_map(nc: NATS, netmap: NetworkMap, signer: Signer | None = None) -> None:
    """Store ``netmap`` signed under its peer's key (creating the bucket if needed)."""
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    kv = TypedKV(bucket, NetworkMap, signer=signer or map_signer())
    await kv.put(subjects.netmap_key(netmap.peer.id), netmap)


class _Unverified(Verifier):
    """Opens any signed document (tests about something other than the signatures)."""

    def __init__(self) -> None:
        super().__init__("map")

    def open(self, doc: SignedDoc) -> bytes:
        return doc.payload


async def stored_map(nc: NATS, peer_id: str, verifier: Verifier | None = None) -> NetworkMap | None:
    """The whole map stored for ``peer_id``, read as the peer reads it (verified if told how).

    The key and the snapshot are two reads: when policy writes a new snapshot between them
    (and erases the old one), both are read again, a few times.

    Raises:
        Refused: it does not verify.
        Unresolved: it is a delta whose snapshot stays missing.
    """

    async def snapshot(base_hash: bytes) -> bytes | None:
        key = subjects.netmap_snapshot_key(peer_id, base_hash)
        return await direct_get(nc, subjects.BUCKET_NETMAPS, key)

    verifier = verifier or _Unverified()
    for delay in (0.02, 0.05, 0.1, 0.2, 0.4, None):
        data = await direct_get(nc, subjects.BUCKET_NETMAPS, subjects.netmap_key(peer_id))
        if data is None:
            return None
        try:
            chain = MapChain(verifier, fetch_snapshot=snapshot)
            return await chain.resolve(verifier.open_as(data, MAP_DOC))
        except Unresolved:
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class MapAssembler:
    """Whole maps from the events of a watch of the entire ``meshssh-netmaps`` bucket.

    A snapshot (``snap.<id>.<hash>``) is remembered; a delta (``peer.<id>``) is applied to the
    one it names, which the stream delivered before it.
    """

    def __init__(self) -> None:
        self.snapshots: dict[str, NetworkMap] = {}

    def feed(self, key: str, value: MapDoc | None) -> NetworkMap | None:
        """The whole map a ``peer.<id>`` event stands for; None for anything else.

        Raises:
            KeyError: a delta names a snapshot the watch has not delivered.
        """
        if key.startswith("snap."):
            if isinstance(value, NetworkMap):
                self.snapshots[key] = value
            return None
        if value is None or isinstance(value, NetworkMap):
            return value
        peer_id = key.split(".", 1)[1]
        return value.apply(self.snapshots[subjects.netmap_snapshot_key(peer_id, value.base_hash)])
