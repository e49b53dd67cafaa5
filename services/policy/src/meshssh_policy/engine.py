"""The map engine: watch the state buckets, apply changes, recompute and publish maps.

One task per watched bucket feeds a queue; one loop drains it in batches, so a burst of
changes costs one recomputation. Per batch, in order:

1. apply every event to :class:`State` (then wake REST writers waiting for their write);
2. rebuild the :class:`Index` when peers, groups or policies changed, or a user came or went
   (only its rules when only policies changed);
3. collect the affected peers (:mod:`meshssh_policy.impact`, with the old and new index);
4. compile their maps and publish them (pipelined, ``publish_concurrency`` writes at once);
   a peer whose public projection changed pulls in the peers that reach or list it;
5. record the processed view (registration replies wait for it).

A removed peer's record goes to ``on_removed`` (its bus key is revoked, whichever path
removed it).

The first batch after every watch finished its initial values computes every peer once.
Removed peers get an empty map (everything refused) instead of a deleted key, so a replica
that is behind cannot bring an old map back.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.errors import Unavailable
from meshssh_common.kv import KvEvent, TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import NetworkMap, PeerMeta, RemotePeer
from meshssh_policy.compiler import Compiler, host_prefix, tombstone
from meshssh_policy.digest import Parts
from meshssh_policy.impact import Change, affected_by
from meshssh_policy.index import Index
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.publisher import Outcome, Publisher
from meshssh_policy.records import PeerRecord, check_record
from meshssh_policy.state import State, dominates

__all__ = ["Engine"]

_CHUNK = 200  # peers compiled between two yields to the event loop
_RETRY_AFTER = 1.0
_RECONNECT_POLL = 0.25  # how often a watch checks whether NATS reconnected
_STRUCTURAL = frozenset(
    {subjects.BUCKET_PEERS, subjects.BUCKET_USERS, subjects.BUCKET_GROUPS, subjects.BUCKET_POLICIES}
)


def _structural(change: Change) -> bool:
    """Whether ``change`` can alter the index (a login moving a user's times cannot)."""
    if change.bucket == subjects.BUCKET_USERS:
        return (change.old is None) != (change.new is None)
    return change.bucket in _STRUCTURAL


@dataclass(frozen=True, slots=True)
class _Retry:
    """Queue marker: recompute the peers whose last publish failed."""


Item = tuple[str, KvEvent[Any]] | _Retry
_Compiled = tuple[str, NetworkMap, Parts]  # peer id, map, its content digests


class Engine:
    """Keeps ``state`` current and every peer's map published; run with :meth:`run`."""

    def __init__(
        self,
        state: State,
        buckets: dict[str, TypedKV[Any]],
        publisher: Publisher,
        *,
        mesh_prefix: str,
        concurrency: int,
        metrics: PolicyMetrics,
        log: BoundLogger,
        nc: NATS,
    ) -> None:
        self.state = state
        self.nc = nc
        self.buckets = buckets
        self.publisher = publisher
        self.mesh_prefix = mesh_prefix
        self.concurrency = concurrency
        self.metrics = metrics
        self.log = log
        self.index = Index()
        self.loaded = asyncio.Event()
        self.processed: dict[str, int] = {}
        self._processed_changed = asyncio.Condition()
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._initial = set(buckets)
        self._projections: dict[str, tuple[RemotePeer, str]] = {}
        self._failed: set[str] = set()
        self.on_removed: Callable[[PeerRecord], None] | None = None  # revokes its bus key
        self.owns: Callable[[str], bool] = lambda _peer_id: True  # see ownership.py

    def recompute_soon(self, peers: set[str]) -> None:
        """Compute and publish ``peers`` in the next batch (this replica just gained them)."""
        self._failed |= peers
        self._queue.put_nowait(_Retry())

    async def run(self) -> None:
        """Load the stored maps, watch every bucket and process changes until cancelled."""
        await self.publisher.load()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_all())
            tg.create_task(self._retry_loop())
            await self._loop()

    async def _watch_all(self) -> None:
        # TypedKV.follow restarts a watch after every NATS reconnect (a KV watch can stay
        # silent ~15 s after nats-server restarted) and after an outage; the replayed values
        # at or below the applied revision are skipped in _process. A watch that fails for
        # another reason (a bug) ends the engine, and with it the replica, visibly.
        async with asyncio.TaskGroup() as tg:
            for bucket, kv in self.buckets.items():
                tg.create_task(self._watch(bucket, kv))

    async def _watch(self, bucket: str, kv: TypedKV[Any]) -> None:
        pattern = "peer.*" if bucket == subjects.BUCKET_PEERS else ">"

        def retrying(error: Exception) -> None:
            self.log.warning(
                "state watch failed; retrying", extra={"bucket": bucket, "error": repr(error)}
            )

        async for ev in kv.follow(pattern, self.nc, check_every=_RECONNECT_POLL, on_retry=retrying):
            await self._queue.put((bucket, ev))

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(_RETRY_AFTER)
            if self._failed:
                await self._queue.put(_Retry())

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.perf_counter()
            try:
                await self._process(batch)
            except Exception:
                # A bug must not stop the engine: log it, and recompute everything soon.
                self.metrics.batch_errors.inc()
                self.log.exception("map batch failed; retrying every peer")
                self._failed |= set(self.state.peers)
            else:
                if self.loaded.is_set():
                    self.metrics.change_seconds.observe(time.perf_counter() - started)

    async def _process(self, batch: list[Item]) -> None:
        changes: list[Change] = []
        retry = False
        for item in batch:
            if isinstance(item, _Retry):
                retry = True
                continue
            bucket, ev = item
            if ev.initial_done:
                self._initial.discard(bucket)
                continue
            if ev.revision <= self.state.view.get(bucket, 0):
                continue  # replayed by a restarted watch: applied already
            if ev.value is not None and not self._valid(bucket, ev.key, ev.value):
                continue
            old = self.state.apply(bucket, ev.key, ev.value, ev.revision)
            if old is not None or ev.value is not None:
                changes.append(Change(bucket, ev.key, old, ev.value))
        await self.state.notify()
        self.metrics.peers.set(len(self.state.peers))
        if not self.loaded.is_set():
            if self._initial:
                return
            self.index = Index.build(self.state)
            self.log.info("state loaded", extra={"peers": len(self.state.peers)})
            compute_s, total_s = await self._recompute(
                set(self.state.peers), await self._orphaned_maps(), full=True
            )
            self.log.info(
                "initial maps published",
                extra={
                    "peers": len(self.state.peers),
                    "compute_s": round(compute_s, 4),
                    "total_s": round(total_s, 4),
                },
            )
            self.loaded.set()
            await self._mark_processed()
            _freeze_heap()
            return
        old_index = self.index
        structural = [c for c in changes if _structural(c)]
        if any(c.bucket != subjects.BUCKET_POLICIES for c in structural):
            self.index = Index.build(self.state)
        elif structural:  # policies only: the memberships stay
            self.index = self.index.with_rules(self.state)
        all_peers = set(self.state.peers)
        affected: set[str] = set()
        for change in changes:
            affected |= affected_by(change, old_index, all_peers)
            affected |= affected_by(change, self.index, all_peers)
        if retry:
            affected |= self._failed
            self._failed = set()
        removed = {
            c.old.id: c.old
            for c in changes
            if c.bucket == subjects.BUCKET_PEERS and c.new is None and c.old is not None
        }
        if self.on_removed is not None:
            for record in removed.values():
                self.on_removed(record)
        if affected or removed:
            await self._recompute(affected, removed)
        await self._mark_processed()

    async def _recompute(
        self, affected: set[str], removed: dict[str, PeerRecord], *, full: bool = False
    ) -> tuple[float, float]:
        """Compile and publish ``affected``; tombstone ``removed``.

        Returns:
            Seconds spent compiling, and seconds in total (compiling and publishing).
        """
        started = time.perf_counter()
        compiler = Compiler(self.state, self.index, self.mesh_prefix)
        view = dict(self.state.view)
        out: asyncio.Queue[_Compiled | None] = asyncio.Queue(self.concurrency * 4)
        compute_time = 0.0
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(self._publish_worker(out, view))
                for _ in range(min(self.concurrency, max(1, len(affected) + len(removed))))
            ]
            for peer_id, record in removed.items():
                self._projections.pop(peer_id, None)
                if self.owns(peer_id):
                    dead = tombstone(record, self.mesh_prefix)
                    await out.put((peer_id, dead, compiler.digester.parts(dead)))
            done: set[str] = set()
            todo = set(affected) - set(removed)
            while todo:
                wave = sorted(todo - done)
                done |= todo
                todo = set()
                for i in range(0, len(wave), _CHUNK):
                    t0 = time.perf_counter()
                    compiled = []
                    for peer_id in wave[i : i + _CHUNK]:
                        if peer_id not in self.state.peers:
                            continue
                        if not self.owns(peer_id):  # another replica publishes it
                            if not full:
                                todo |= self._propagate(peer_id, compiler)
                            continue
                        netmap = self._compile(compiler, peer_id)
                        if netmap is None:
                            continue
                        compiled.append((peer_id, netmap, compiler.digester.parts(netmap)))
                        if not full:
                            todo |= self._propagate(peer_id, compiler)
                    compute_time += time.perf_counter() - t0
                    self.metrics.maps_computed.inc(len(compiled))
                    for item in compiled:
                        await out.put(item)  # waits while the writers are behind
                    await asyncio.sleep(0)
                todo -= done
            if full:
                for peer_id in self.state.peers:
                    self._projections[peer_id] = self._projection(peer_id, compiler)
            for _ in workers:
                await out.put(None)
        total = time.perf_counter() - started
        self.metrics.compute_seconds.observe(compute_time)
        self.log.debug(
            "maps recomputed",
            extra={
                "peers": len(done),
                "removed": len(removed),
                "compute_s": round(compute_time, 4),
                "total_s": round(total, 4),
            },
        )
        return compute_time, total

    async def _orphaned_maps(self) -> dict[str, PeerRecord]:
        """Stored maps of peers that no longer exist (removed while no replica ran).

        They get the empty map; one that has it already is left alone (unchanged content).
        """
        out: dict[str, PeerRecord] = {}
        for key in list(self.publisher.known):
            peer_id = key.split(".", 1)[1]
            if peer_id in self.state.peers:
                continue
            stored = await self.publisher.current(peer_id)
            if stored is not None:
                out[peer_id] = PeerRecord(
                    id=peer_id,
                    name=stored.peer.name,
                    mesh_ip=stored.peer.mesh_ip,
                    meta=PeerMeta(version=""),
                    credential_hash="",
                )
        return out

    def _valid(self, bucket: str, key: str, value: Any) -> bool:
        try:
            check_record(value)
        except ValueError as e:
            self.metrics.bad_state.labels(bucket=bucket).inc()
            self.log.error(
                "ignored invalid stored value",
                extra={"bucket": bucket, "key": key, "error": str(e)},
            )
            return False
        return True

    def _compile(self, compiler: Compiler, peer_id: str) -> NetworkMap | None:
        try:
            return compiler.compile(peer_id)
        except Exception:
            # A bug must cost one peer's update, not everyone's: its old map stays.
            self.metrics.maps.labels(result=Outcome.ERROR).inc()
            self.log.exception("map computation failed", extra={"peer": peer_id})
            return None

    @staticmethod
    def _projection(peer_id: str, compiler: Compiler) -> tuple[RemotePeer, str]:
        entry = compiler.remote_entry(peer_id)
        return entry, host_prefix(entry.mesh_ip)

    def _propagate(self, peer_id: str, compiler: Compiler) -> set[str]:
        """Peers to recompute because ``peer_id``'s public projection changed."""
        new = self._projection(peer_id, compiler)
        old = self._projections.get(peer_id)
        if old == new:
            return set()
        self._projections[peer_id] = new
        more: set[str] = set()
        if old is None or old[0] != new[0]:
            more |= self.index.reachers(peer_id)
        if old is None or old[1] != new[1] or old[0].name != new[0].name:
            more |= self.index.source_dependents(peer_id)  # prefixes and source peers
        return more

    async def _publish_worker(
        self, queue: asyncio.Queue[_Compiled | None], view: dict[str, int]
    ) -> None:
        while (item := await queue.get()) is not None:
            peer_id, netmap, parts = item
            outcome = await self.publisher.publish(peer_id, netmap, view, parts=parts)
            if outcome is Outcome.ERROR:
                self._failed.add(peer_id)

    async def _mark_processed(self) -> None:
        async with self._processed_changed:
            self.processed = dict(self.state.view)
            self._processed_changed.notify_all()

    async def wait_processed(self, view: dict[str, int], timeout: float = 10.0) -> None:
        """Wait until the maps for state ``view`` (or newer) have been published.

        Raises:
            Unavailable: not within ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout), self._processed_changed:
                await self._processed_changed.wait_for(lambda: dominates(self.processed, view))
        except TimeoutError as e:
            raise Unavailable(f"network maps not computed within {timeout}s") from e


def _freeze_heap() -> None:
    """Keep what the initial load built out of every later garbage collection.

    At 20,000 peers the state and the compiled shapes are millions of objects, all long-lived;
    a full collection walks them all (hundreds of ms, in the middle of a change's fan-out).
    Frozen objects are still freed by reference counting when replaced; only cycles among
    them would stay, and the state holds none (frozen msgspec Structs and tuples).
    """
    gc.collect()
    gc.freeze()
