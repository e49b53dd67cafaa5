"""Publishing maps to KV: only on change, CAS-protected serials, never from older state."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.signed_doc import Verifier
from meshssh_common.wire import NetworkMap, PeerConfig, RemotePeer
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.publisher import Outcome, Publisher
from meshssh_testkit.signing import map_signer


def content(*remotes: str) -> NetworkMap:
    return NetworkMap(
        serial=1,
        peer=PeerConfig(id="p1", name="p1", mesh_ip="127.0.0.2", mesh_prefix="127.0.0.0/8"),
        remote_peers=tuple(RemotePeer(id=r, name=r, mesh_ip="127.0.0.9") for r in remotes),
    )


async def replica(nc: NATS) -> Publisher:
    kv = TypedKV(
        await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS),
        NetworkMap,
        signer=map_signer(),
        verifier=Verifier("map", map_signer().pins),
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
