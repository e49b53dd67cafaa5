"""Following one KV key without a consumer, against a real nats-server: order, deletes, bad
values, a server restart (with a write the subscription missed), and no consumer made."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.js.api import KeyValueConfig

from meshssh_common import subjects, wire
from meshssh_common.connection import connect_nats
from meshssh_common.errors import WireError
from meshssh_common.key_watch import KeyEvent, KeyWatch
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.wire import NetworkMap
from meshssh_testkit import NatsServer
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.signing import write_test_pins

Meta = wire.MetaReply


@dataclass
class Follower:
    """Runs ``watch.follow()`` in a task and keeps what it reported."""

    watch: KeyWatch[Meta]
    values: list[int | None] = field(default_factory=list)  # serials; None: absent/deleted
    synced: int = 0
    retries: list[Exception] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for event in self.watch.follow(on_retry=self.retries.append):
            self._record(event)

    def _record(self, event: KeyEvent[Meta]) -> None:
        if event.synced:
            self.synced += 1
        else:
            self.values.append(event.value.serial if event.value is not None else None)

    async def until(self, check: Callable[[Follower], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check(self):
                if self.task is not None and self.task.done():
                    self.task.result()  # raise what stopped it
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def following(watch: KeyWatch[Meta]) -> AsyncIterator[Follower]:
    follower = Follower(watch)
    follower.task = asyncio.create_task(follower._run())
    try:
        yield follower
    finally:
        follower.task.cancel()
        await asyncio.gather(follower.task, return_exceptions=True)


def meta_watch(nc: NATS, bucket: str, key: str = "k", **kwargs: object) -> KeyWatch[Meta]:
    return KeyWatch(nc, bucket, key, Meta, version=lambda m: m.serial, **kwargs)  # type: ignore[arg-type]


async def consumers(nc: NATS, bucket: str) -> list[str]:
    """The consumers of ``bucket``'s stream, from the server's JetStream API."""
    reply = await nc.request(f"$JS.API.CONSUMER.LIST.KV_{bucket}", b"{}", timeout=5)
    body = json.loads(reply.data)
    assert "error" not in body, body
    return [c["name"] for c in body.get("consumers") or []]


async def test_the_stored_value_then_every_newer_put_in_order_and_a_delete(nc: NATS) -> None:
    raw = await open_bucket(nc.jetstream(), "t-kw-order")
    kv = TypedKV(raw, Meta)
    await kv.put("k", Meta(serial=1))
    bad: list[tuple[str, WireError]] = []
    watch = meta_watch(nc, "t-kw-order", on_bad_value=lambda k, e: bad.append((k, e)))
    # Reads every 0.1 s: a stored stale or bad value is met again and again.
    watch_fast = meta_watch(nc, "t-kw-order", resync_every=0.1)
    async with following(watch) as f, following(watch_fast) as fast:
        await f.until(lambda f: f.synced >= 1)
        assert f.values == [1]
        for serial in (2, 3, 4):
            await kv.put("k", Meta(serial=serial))
        await raw.put("k", b"not a meta reply")
        await kv.put("k", Meta(serial=2))  # stale: stored, never reported
        await f.until(lambda f: len(bad) == 1)
        await fast.until(lambda f: f.synced >= 5)
        await raw.delete("k")
        await f.until(lambda f: f.values[-1:] == [None])
        await kv.put("k", Meta(serial=1))  # a re-created key starts over
        await f.until(lambda f: f.values == [1, 2, 3, 4, None, 1])
        await fast.until(lambda f: f.values[-1:] == [1])
        assert await consumers(nc, "t-kw-order") == []
    assert bad[0][0] == "k"
    assert len(bad) == 1
    assert fast.values == [1, 2, 3, 4, None, 1]
    assert f.retries == fast.retries == []


async def test_an_absent_key_is_reported_as_none_then_its_first_value(nc: NATS) -> None:
    kv = TypedKV(await open_bucket(nc.jetstream(), "t-kw-absent"), Meta)
    async with following(meta_watch(nc, "t-kw-absent")) as f:
        await f.until(lambda f: f.synced >= 1)
        assert f.values == [None]
        await kv.put("k", Meta(serial=7))
        await f.until(lambda f: f.values == [None, 7])


async def test_a_missing_bucket_is_an_outage_reported_once_until_it_exists(nc: NATS) -> None:
    async with following(meta_watch(nc, "t-kw-later")) as f:
        await asyncio.sleep(0.8)  # a few failed reads (backoff from 0.1 s)
        assert f.synced == 0
        assert len(f.retries) == 1, f.retries
        assert isinstance(f.retries[0], nats.errors.NoRespondersError)
        kv = TypedKV(await open_bucket(nc.jetstream(), "t-kw-later"), Meta)
        await kv.put("k", Meta(serial=3))
        await f.until(lambda f: f.synced >= 1)
        assert f.values == [3]


async def test_a_failing_bad_value_hook_is_raised_not_retried(nc: NATS) -> None:
    class Boom(Exception):
        pass

    def explode(key: str, error: WireError) -> None:
        raise Boom(key)

    raw = await open_bucket(nc.jetstream(), "t-kw-bug")
    await raw.put("k", b"garbage")
    retried: list[Exception] = []

    async def drain() -> None:
        async with asyncio.timeout(5):
            async for _ in meta_watch(nc, "t-kw-bug", on_bad_value=explode).follow(
                on_retry=retried.append
            ):
                pass

    with pytest.raises(Boom):
        await drain()
    assert retried == []


async def test_a_bucket_made_without_direct_gets_is_updated_to_answer_them(nc: NATS) -> None:
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket="t-kw-old", direct=False))
    assert not (await js.stream_info("KV_t-kw-old")).config.allow_direct
    kv = TypedKV(await open_bucket(js, "t-kw-old"), Meta)
    assert (await js.stream_info("KV_t-kw-old")).config.allow_direct
    await kv.put("k", Meta(serial=5))
    async with following(meta_watch(nc, "t-kw-old")) as f:
        await f.until(lambda f: f.synced >= 1)
        assert f.values == [5]


async def test_following_maps_and_keys_makes_no_consumer(nc: NATS) -> None:
    js = nc.jetstream()
    jwks = await open_bucket(js, subjects.BUCKET_JWKS)
    for i in range(3):
        await put_map(nc, make_map(1, peer_id=f"p{i}"))
    await jwks.put(subjects.JWKS_KEY, b"{}")
    metrics = ServiceMetrics("test")
    pins = write_test_pins(Path(tempfile.mkdtemp(prefix="pins-")))
    maps = [PeerMap(log=service_logger("test"), metrics=metrics, pins=pins) for _ in range(3)]
    tasks = [asyncio.create_task(m.follow(nc, f"p{i}")) for i, m in enumerate(maps)]
    keys = KeyWatch(nc, subjects.BUCKET_JWKS, subjects.JWKS_KEY, wire.JwksSnapshot, version=None)
    try:
        async with following(keys) as f:  # type: ignore[arg-type]
            for m in maps:
                assert await m.wait_received(5.0)
            await f.until(lambda f: f.synced >= 1)
            await put_map(nc, make_map(2, peer_id="p1"))
            async with asyncio.timeout(5):
                while maps[1].serial != 2:
                    await asyncio.sleep(0.02)
            assert await consumers(nc, subjects.BUCKET_NETMAPS) == []
            assert await consumers(nc, subjects.BUCKET_JWKS) == []
            assert (await js.stream_info(f"KV_{subjects.BUCKET_NETMAPS}")).state.consumer_count == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [m.serial for m in maps] == [1, 2, 1]


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_a_restart_resyncs_including_a_put_the_subscription_missed(
    nats_server: NatsServer,
) -> None:
    """The follower stays away until the test lets it back (its reconnect handler points it at
    a refusing port until then), so a put made meanwhile can only reach it through the read
    that follows the reconnect."""
    allowed = asyncio.Event()
    with refusing_port() as dead:
        dead_url = f"nats://127.0.0.1:{dead}"

        def pick(servers: list[Server], info: dict[str, object]) -> tuple[Server, float]:
            wanted = nats_server.url if allowed.is_set() else dead_url
            return next(s for s in servers if s.uri.geturl() == wanted), 0.05

        follower_nc = await nats.connect(
            servers=[nats_server.url, dead_url],
            **nats_server.client_options(),
            dont_randomize=True,
            max_reconnect_attempts=-1,
            reconnect_to_server_handler=pick,
        )
        writer = await nats_server.connect(max_reconnect_attempts=-1)
        try:
            kv = TypedKV(await open_bucket(writer.jetstream(), "t-kw-restart"), Meta)
            await kv.put("k", Meta(serial=1))
            async with following(meta_watch(follower_nc, "t-kw-restart")) as f:
                await f.until(lambda f: f.synced >= 1)
                synced = f.synced
                await nats_server.restart()
                async with asyncio.timeout(10):
                    while not writer.is_connected:
                        await asyncio.sleep(0.05)
                kv = TypedKV(await open_bucket(writer.jetstream(), "t-kw-restart"), Meta)
                await kv.put("k", Meta(serial=2))  # the follower is away: its subscription too
                assert not follower_nc.is_connected
                assert f.values == [1]
                allowed.set()
                await f.until(lambda f: f.values == [1, 2] and f.synced > synced, 5.0)
                await kv.put("k", Meta(serial=3))
                await f.until(lambda f: f.values == [1, 2, 3], 5.0)
        finally:
            await writer.close()
            await follower_nc.close()


async def test_followers_cancelled_mid_read_all_end(nc: NATS) -> None:
    """nats-py's request can swallow a cancellation (3.11's wait_for); the watch raises it."""
    raw = await open_bucket(nc.jetstream(), "t-kw-cancel")
    await raw.put("k", b'{"serial": 1}')
    for _ in range(3):
        watches = [meta_watch(nc, "t-kw-cancel", resync_every=0.001) for _ in range(200)]
        runs = [asyncio.create_task(_drain(w)) for w in watches]
        await asyncio.sleep(0.5)  # reading all the time
        for run in runs:
            run.cancel()
        _, pending = await asyncio.wait(runs, timeout=10)
        assert not pending, f"{len(pending)} followers did not end"


async def _drain(watch: KeyWatch[Meta]) -> None:
    async for _ in watch.follow():
        pass


async def test_a_peer_follows_its_own_map_with_only_its_permissions(
    nats_server: NatsServer,
) -> None:
    """Auth on, a peer identity minted with ``peer_permissions``: the key watch reads the
    peer's own map and the JWKS key, and nothing but those subjects is needed."""
    admin = await connect_nats(nats_server.url, name="admin", creds=nats_server.creds("admin"))
    peer = await connect_nats(nats_server.url, name="p1", creds=nats_server.peer_creds("p1"))
    try:
        await put_map(admin, make_map(1, peer_id="p1"))
        await put_map(admin, make_map(1, peer_id="p2"))
        await open_bucket(admin.jetstream(), subjects.BUCKET_JWKS)
        metrics = ServiceMetrics("test")
        pins = write_test_pins(Path(tempfile.mkdtemp(prefix="pins-")))
        maps = PeerMap(log=service_logger("test"), metrics=metrics, pins=pins)
        task = asyncio.create_task(maps.follow(peer, "p1"))
        other = KeyWatch(
            peer,
            subjects.BUCKET_NETMAPS,
            subjects.netmap_key("p2"),
            NetworkMap,
            version=lambda m: m.serial,
            get_timeout=0.5,
        )
        try:
            async with following(other) as refused:  # type: ignore[arg-type]
                assert await maps.wait_received(5.0)
                await put_map(admin, make_map(2, peer_id="p1"))
                await put_map(admin, make_map(2, peer_id="p2"))
                async with asyncio.timeout(5):
                    while maps.serial != 2:
                        await asyncio.sleep(0.02)
                await asyncio.sleep(1.0)  # the other peer's key: reads time out, nothing heard
                assert (refused.values, refused.synced) == ([], 0)
                assert len(refused.retries) == 1
                assert await consumers(admin, subjects.BUCKET_NETMAPS) == []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        jwks = KeyWatch(
            peer, subjects.BUCKET_JWKS, subjects.JWKS_KEY, wire.JwksSnapshot, version=None
        )
        async with following(jwks) as f:  # type: ignore[arg-type]
            await f.until(lambda f: f.synced >= 1)
            assert f.values == [None]
            assert f.retries == []
    finally:
        await peer.close()
        await admin.close()
