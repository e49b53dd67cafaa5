"""Publishing maps to KV: only on change, CAS-protected serials, never from older state."""

from __future__ import annotations

import asyncio

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.key_watch import direct_get
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import service_logger
from meshssh_common.map_chain import MAP_DOC
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.signed_doc import Signer, Verifier
from meshssh_common.wire import FirewallRule, MapDelta, MapDoc, NetworkMap, PeerConfig, RemotePeer
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.publisher import Outcome, Publisher
from meshssh_testkit.netmaps import stored_map
from meshssh_testkit.signing import map_signer


def content(*remotes: str) -> NetworkMap:
    return NetworkMap(
        serial=1,
        peer=PeerConfig(id="p1", name="p1", mesh_ip="127.0.0.2", mesh_prefix="127.0.0.0/8"),
        remote_peers=tuple(RemotePeer(id=r, name=r, mesh_ip="127.0.0.9") for r in remotes),
    )


async def replica(nc: NATS, signer: Signer | None = None) -> Publisher:
    signer = signer or map_signer()
    kv = TypedKV(
        await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS),
        MAP_DOC,
        signer=signer,
        verifier=Verifier("map", signer.pins),
    )
    publisher = Publisher(kv, PolicyMetrics(ServiceMetrics("policy")), service_logger("policy"))
    await publisher.load()
    return publisher


async def stored(publisher: Publisher) -> NetworkMap:
    current = await publisher.current("p1")
    assert current is not None
    return current


async def test_an_unchanged_map_is_not_written_again(nc: NATS) -> None:
    a = await replica(nc)
    assert await a.publish("p1", content("x"), {"b": 1}) is Outcome.PUBLISHED
    assert await a.publish("p1", content("x"), {"b": 2}) is Outcome.UNCHANGED
    first = await stored(a)
    assert (first.serial, first.state_revisions) == (1, {"b": 1})
    b = await replica(nc)  # a restarted replica learns what is stored
    assert await b.publish("p1", content("x"), {"b": 3}) is Outcome.UNCHANGED


async def test_a_replica_behind_never_overwrites_a_map_from_newer_state(nc: NATS) -> None:
    fast, slow = await replica(nc), await replica(nc)
    assert await fast.publish("p1", content("x"), {"b": 5, "c": 1}) is Outcome.PUBLISHED
    # slow has not seen revision 5 of bucket b yet (think: a revocation): it must not win
    assert await slow.publish("p1", content("x", "y"), {"b": 4, "c": 1}) is Outcome.STALE
    assert await slow.publish("p1", content("x", "y"), {"b": 4, "c": 9}) is Outcome.STALE
    assert (await stored(fast)).remote_peers == content("x").remote_peers
    # once caught up in every bucket, it publishes, with the next serial
    assert await slow.publish("p1", content("x", "z"), {"b": 6, "c": 1}) is Outcome.PUBLISHED
    latest = await stored(fast)
    assert latest.serial == 2
    assert [r.id for r in latest.remote_peers] == ["x", "z"]


async def test_concurrent_writers_of_one_key_never_reuse_or_skip_a_serial(nc: NATS) -> None:
    writers = [await replica(nc) for _ in range(4)]
    outcomes = await asyncio.gather(
        *(w.publish("p1", content(f"r{i}"), {"b": i + 1}) for i, w in enumerate(writers))
    )
    published = outcomes.count(Outcome.PUBLISHED)
    assert published >= 1
    assert set(outcomes) <= {Outcome.PUBLISHED, Outcome.STALE}
    assert (await stored(writers[0])).serial == published


def wide(port: str, remotes: int = 200) -> NetworkMap:
    """A map with many remote peers (most of its bytes) and one rule on ``port``."""
    rule = FirewallRule(sources=("127.0.0.3/32",), protocol="tcp", action="accept", policy_id="p")
    return msgspec.structs.replace(
        content(*(f"r{i}" for i in range(remotes))),
        firewall_rules=(msgspec.structs.replace(rule, port=port),),
    )


async def raw(nc: NATS, key: str) -> MapDoc | None:
    """What ``key`` holds, verified but not resolved (a delta stays a delta)."""
    data = await direct_get(nc, subjects.BUCKET_NETMAPS, key)
    return None if data is None else Verifier("map", map_signer().pins).open_as(data, MAP_DOC)


async def test_a_change_stores_only_the_fields_that_differ_from_the_snapshot(nc: NATS) -> None:
    a = await replica(nc)
    assert await a.publish("p1", wide("22"), {"b": 1}) is Outcome.PUBLISHED
    first = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(first, MapDelta)  # the first write: a snapshot, and a delta naming it
    assert (first.serial, first.base_serial, first.firewall_rules) == (1, 1, None)
    snap_key = subjects.netmap_snapshot_key("p1", first.base_hash)
    snapshot = await raw(nc, snap_key)
    assert isinstance(snapshot, NetworkMap)
    assert snapshot.serial == 1

    assert await a.publish("p1", wide("2222"), {"b": 2}) is Outcome.PUBLISHED
    delta = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(delta, MapDelta)
    assert (delta.serial, delta.base_serial, delta.base_hash) == (2, 1, first.base_hash)
    assert delta.remote_peers is None
    assert delta.peer is None
    assert delta.firewall_rules == wide("2222").firewall_rules
    sizes = [
        len(await direct_get(nc, subjects.BUCKET_NETMAPS, k) or b"")
        for k in (subjects.netmap_key("p1"), snap_key)
    ]
    assert sizes[0] * 10 < sizes[1], sizes  # the point: a change costs a fraction of the map
    whole = await stored(a)
    assert whole == msgspec.structs.replace(wide("2222"), serial=2, state_revisions={"b": 2})
    assert await stored_map(nc, "p1", Verifier("map", map_signer().pins)) == whole


async def test_a_big_change_writes_a_new_snapshot_and_erases_the_old_one(nc: NATS) -> None:
    a = await replica(nc)
    assert await a.publish("p1", wide("22"), {"b": 1}) is Outcome.PUBLISHED
    old = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(old, MapDelta)
    other = content(*(f"s{i}" for i in range(200)))  # every remote peer changed
    assert await a.publish("p1", other, {"b": 2}) is Outcome.PUBLISHED
    new = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(new, MapDelta)
    assert (new.serial, new.base_serial, new.remote_peers) == (2, 2, None)
    assert new.base_hash != old.base_hash
    assert await raw(nc, subjects.netmap_snapshot_key("p1", old.base_hash)) is None  # erased
    assert (await stored(a)).remote_peers == other.remote_peers


async def test_a_replica_that_did_not_write_the_snapshot_builds_on_it(nc: NATS) -> None:
    a = await replica(nc)
    assert await a.publish("p1", wide("22"), {"b": 1}) is Outcome.PUBLISHED
    first = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(first, MapDelta)
    b = await replica(nc)  # e.g. restarted, or the peer's new owner: it reads a's snapshot
    assert await b.publish("p1", wide("2222"), {"b": 2}) is Outcome.PUBLISHED
    doc = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(doc, MapDelta)
    assert (doc.serial, doc.base_serial, doc.base_hash) == (2, 1, first.base_hash)
    assert doc.firewall_rules == wide("2222").firewall_rules
    assert doc.remote_peers is None  # no new snapshot for peers to read
    # a, whose knowledge is stale, loses the compare-and-set, looks again, builds on it too
    assert await a.publish("p1", wide("24"), {"b": 4}) is Outcome.PUBLISHED
    whole = await stored(b)
    assert (whole.serial, whole.firewall_rules) == (3, wide("24").firewall_rules)


async def test_a_snapshot_that_cannot_be_read_is_replaced_by_a_new_one(nc: NATS) -> None:
    a = await replica(nc)
    assert await a.publish("p1", wide("22"), {"b": 1}) is Outcome.PUBLISHED
    first = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(first, MapDelta)
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    await bucket.purge(subjects.netmap_snapshot_key("p1", first.base_hash))  # lost
    b = await replica(nc)
    assert await b.publish("p1", wide("2222"), {"b": 2}) is Outcome.PUBLISHED
    doc = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(doc, MapDelta)
    assert (doc.serial, doc.base_serial) == (2, 2)  # a new snapshot, named by its delta
    assert doc.base_hash != first.base_hash
    assert (await stored(b)).firewall_rules == wide("2222").firewall_rules


async def test_after_a_key_rotation_the_next_change_writes_a_snapshot_under_the_new_key(
    nc: NATS,
) -> None:
    a = await replica(nc)
    assert await a.publish("p1", wide("22"), {"b": 1}) is Outcome.PUBLISHED
    old = map_signer()
    rotated = Signer(Ed25519PrivateKey.generate(), kind="map", previous=old._key)
    b = await replica(nc, rotated)
    assert await b.publish("p1", wide("2222"), {"b": 2}) is Outcome.PUBLISHED
    doc = await raw(nc, subjects.netmap_key("p1"))
    assert isinstance(doc, MapDelta)
    assert (doc.serial, doc.base_serial) == (2, 2)  # not a delta on the old key's snapshot
    new_only = Verifier("map", (rotated.public_key,))  # a peer that renewed its pins
    whole = await stored_map(nc, "p1", new_only)
    assert whole is not None
    assert whole.firewall_rules == wide("2222").firewall_rules
