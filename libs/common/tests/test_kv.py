"""Typed KV against a real JetStream: compare-and-set, watch, durability across a restart."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import wire
from meshssh_common.errors import Conflict, Unavailable, WireError
from meshssh_common.kv import KvEvent, TypedKV, open_bucket
from meshssh_testkit import NatsServer


async def test_compare_and_set_refuses_a_stale_writer(nc: NATS) -> None:
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-cas"), wire.MetaReply)
    rev = await kv.create("k", wire.MetaReply(serial=1))
    with pytest.raises(Conflict):
        await kv.create("k", wire.MetaReply(serial=9))
    rev2 = await kv.update("k", wire.MetaReply(serial=2), last=rev)
    with pytest.raises(Conflict):
        await kv.update("k", wire.MetaReply(serial=3), last=rev)  # a writer that read rev
    entry = await kv.get("k")
    assert entry is not None
    assert (entry.value.serial, entry.revision) == (2, rev2)


async def test_a_stale_delete_is_a_conflict(nc: NATS) -> None:
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-del"), wire.MetaReply)
    rev = await kv.create("k", wire.MetaReply(serial=1))
    await kv.update("k", wire.MetaReply(serial=2), last=rev)
    with pytest.raises(Conflict):
        await kv.delete("k", last=rev)
    assert await kv.get("k") is not None


async def test_concurrent_increments_never_lose_an_update(nc: NATS) -> None:
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-inc"), wire.MetaReply)
    await kv.create("n", wire.MetaReply(serial=0))

    async def increment() -> None:
        while True:
            entry = await kv.get("n")
            assert entry is not None
            try:
                await kv.update(
                    "n", wire.MetaReply(serial=entry.value.serial + 1), last=entry.revision
                )
                return
            except Conflict:
                continue

    await asyncio.gather(*(increment() for _ in range(20)))
    entry = await kv.get("n")
    assert entry is not None
    assert entry.value.serial == 20


async def test_watch_yields_initial_values_then_changes_and_skips_bad_values(nc: NATS) -> None:
    bad: list[str] = []
    raw = await open_bucket(nc.jetstream(), "t-watch")
    kv = TypedKV(raw, wire.MetaReply, on_bad_value=lambda key, e: bad.append(key))
    await kv.put("peer.a", wire.MetaReply(serial=1))
    events: list[KvEvent[wire.MetaReply]] = []
    done = asyncio.Event()

    async def watch() -> None:
        async for ev in kv.watch("peer.*"):
            events.append(ev)
            if ev.key == "peer.b" and ev.value is None:
                done.set()

    task = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.2)
        await raw.put("peer.x", b"garbage")
        await kv.put("peer.b", wire.MetaReply(serial=2))
        await kv.delete("peer.b")
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [(e.key, e.value, e.initial_done) for e in events] == [
        ("peer.a", wire.MetaReply(serial=1), False),
        ("", None, True),
        ("peer.b", wire.MetaReply(serial=2), False),
        ("peer.b", None, False),
    ]
    assert bad == ["peer.x"]
    with pytest.raises(WireError):
        await TypedKV(raw, wire.MetaReply).get("peer.x")


async def test_state_survives_a_nats_server_restart(nats_server: NatsServer) -> None:
    nc = await nats_server.connect()
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-durable"), wire.MetaReply)
    await kv.put("k", wire.MetaReply(serial=7))
    await nc.close()
    await nats_server.restart()
    nc = await nats_server.connect()
    try:
        kv = TypedKV(await open_bucket(nc.jetstream(), "t-durable"), wire.MetaReply)
        entry = await kv.get("k")
        assert entry is not None
        assert entry.value.serial == 7
    finally:
        await nc.close()


async def test_follow_resumes_quickly_after_nats_restarts(nats_server: NatsServer) -> None:
    nc = await nats_server.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        kv = TypedKV(await open_bucket(nc.jetstream(), "t-follow"), wire.MetaReply)
        await kv.put("peer.a", wire.MetaReply(serial=1))
        seen: list[int] = []
        got = asyncio.Event()

        async def follow() -> None:
            async for ev in kv.follow("peer.a", nc):
                if ev.value is not None:
                    seen.append(ev.value.serial)
                    if ev.value.serial == 2:
                        got.set()

        task = asyncio.create_task(follow())
        try:
            async with asyncio.timeout(5):
                while not seen:
                    await asyncio.sleep(0.05)
            await nats_server.restart()
            async with asyncio.timeout(10):
                while not nc.is_connected:
                    await asyncio.sleep(0.05)
            kv2 = TypedKV(await open_bucket(nc.jetstream(), "t-follow"), wire.MetaReply)
            await kv2.put("peer.a", wire.MetaReply(serial=2))
            async with asyncio.timeout(5):  # well under the ~15 s a plain watch can stay silent
                await got.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert seen[0] == 1
        assert seen[-1] == 2
    finally:
        await nc.close()


async def test_follow_raises_what_is_not_an_outage(nc: NATS) -> None:
    class Boom(Exception):
        pass

    def explode(key: str, error: WireError) -> None:
        raise Boom(key)  # a bug in the consumer's hook: the pump dies with it

    raw = await open_bucket(nc.jetstream(), "t-follow-bug")
    kv = TypedKV(raw, wire.MetaReply, on_bad_value=explode)
    retried: list[Exception] = []
    await raw.put("k", b"garbage")

    async def drain() -> None:
        async with asyncio.timeout(5):
            async for _ in kv.follow("k", nc, on_retry=retried.append):
                pass

    with pytest.raises(Boom):
        await drain()
    assert retried == []


async def test_an_outage_is_unavailable_not_a_nats_py_error(nats_server: NatsServer) -> None:
    nc = await nats_server.connect()
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-outage"), wire.MetaReply)
    await kv.put("k", wire.MetaReply(serial=1))
    await nc.close()
    with pytest.raises(Unavailable):
        await kv.get("k")
    with pytest.raises(Unavailable):
        await kv.put("k", wire.MetaReply(serial=2))
    with pytest.raises(Unavailable):
        await kv.update("k", wire.MetaReply(serial=2), last=1)


async def test_an_encoded_value_is_stored_as_is(nc: NATS) -> None:
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-encoded"), wire.MetaReply)
    data = kv.encode(wire.MetaReply(serial=4))
    rev = await kv.create("k", data)
    entry = await kv.get("k")
    assert entry is not None
    assert (entry.value, entry.revision) == (wire.MetaReply(serial=4), rev)


async def test_a_snapshot_leaves_no_consumer_behind(nc: NATS) -> None:
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-snapshot"), wire.MetaReply)
    await kv.put("k", wire.MetaReply(serial=1))
    assert set(await kv.values()) == {"k"}
    js = nc.jetstream()
    async with asyncio.timeout(30):  # the server drops it 5 s after the snapshot's end
        while (await js.stream_info("KV_t-snapshot")).state.consumer_count:
            await asyncio.sleep(0.5)
