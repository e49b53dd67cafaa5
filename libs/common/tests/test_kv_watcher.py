"""A KV watch on a 3-node cluster outlives the death of the node that holds its consumer.

The client stays connected to a node that lives, so no reconnect tells it anything: only the
consumer's heartbeats stop. nats-py's own watch noticed after 10 to 20 s (20 s measured);
:class:`KvWatcher` must resume within a few seconds of JetStream answering again (new
leaders elected), and miss nothing written meanwhile.
"""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from meshssh_common.kv_watcher import KvWatcher
from meshssh_testkit.natscluster import NatsCluster

RESUMED_WITHIN_S = 4.0  # after JetStream answers again; heartbeats of 0.5 s, checked every 1 s


async def _put(kv: KeyValue, value: bytes) -> None:
    """Put ``k``, waiting out the stream's leader election (a new stream, a dead leader)."""
    async with asyncio.timeout(30):
        while True:
            try:
                await kv.put("k", value)
                return
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.1)


async def _watch_away_from(kv: KeyValue, client_node: str) -> tuple[KvWatcher, str]:
    """A watch of ``k`` whose consumer is on another node than the client's (and that node)."""
    for _ in range(20):  # the server places the consumer: try until it lands elsewhere
        watcher = await KvWatcher.start(kv, "k")
        node = ""
        async with asyncio.timeout(10):
            while not node:  # the info names the consumer's node once it is placed
                info = await watcher._sub.consumer_info()
                node = info.cluster.leader if info.cluster is not None else ""
                await asyncio.sleep(0 if node else 0.1)
        if node != client_node:
            return watcher, str(node)
        await watcher.stop()
    raise AssertionError("every watch consumer was placed on the client's node")


async def test_a_watch_resumes_soon_after_the_node_holding_its_consumer_dies(
    nats_cluster: NatsCluster,
) -> None:
    nc = await nats.connect(
        servers=[nats_cluster.urls[0]], **nats_cluster.client_options("admin")
    )  # n0 only: it lives, so the client never reconnects
    try:
        js = nc.jetstream(timeout=2)
        kv = await js.create_key_value(KeyValueConfig(bucket="t-watch", replicas=3))
        await _put(kv, b"0")
        watcher, node = await _watch_away_from(kv, "n0")
        entries = aiter(watcher)
        first = await anext(entries)
        assert first is not None
        assert first.value == b"0"
        assert await anext(entries) is None  # the initial values are in

        await nats_cluster.kill(int(node.removeprefix("n")))
        killed = time.monotonic()

        async def answering_again() -> float:
            await nats_cluster.wait_jetstream(timeout=30)  # a meta leader, the account answers
            return time.monotonic()

        recovered = asyncio.create_task(answering_again())
        await _put(kv, b"1")
        written = time.monotonic()
        async with asyncio.timeout(30):
            seen = await anext(entries)
        seen_at = time.monotonic()
        answering = max(written, await recovered)
        assert seen is not None
        assert seen.value == b"1"
        print(
            f"consumer's node {node} killed: written after {written - killed:.2f}s, JetStream "
            f"answering after {answering - killed:.2f}s, seen after {seen_at - killed:.2f}s"
        )
        assert seen_at - answering <= RESUMED_WITHIN_S, (seen_at - killed, answering - killed)
        await watcher.stop()
    finally:
        await nc.close()
