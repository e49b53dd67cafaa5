"""How fast does the management plane compute 5,000 maps, and propagate one policy change?

Builds 5,000 peers in 100 groups (50 each) with 500 policies: group g may reach groups g+1..g+5
on TCP 22, so every peer reaches 250 others and is reached by 250. 200 users, half the peers
with SSH on. The state is written straight into KV, then a real ``meshssh-policy`` process
starts on a real nats-server (loopback) and computes and publishes every map.

Figures, each against a floor measured in the same run:

- full compute: the policy's own timing of the initial computation (compile only, and
  compile + publish of all 5,000 maps), over 3 runs (the map bucket emptied before each);
  floor: encoding the same 5,000 maps and putting them into KV with the same concurrency;
- change propagation: one REST ``PATCH`` of a policy's ports to the moment a KV watch has
  seen the new map of every affected peer (50 destinations), 20 changes; floor: putting those
  same 50 maps into KV and seeing them in a watch, alternated with the changes;
- peak RSS of the policy process; floor: the peak RSS of the same process on an empty state.

Run: ``.venv/bin/python bench/policy_scale.py`` (``make bench B=policy_scale``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from nats.js.kv import KeyValue

from meshssh_common import codec, subjects
from meshssh_common.kv import open_bucket
from meshssh_common.wire import NetworkMap, PeerFlags, PeerMeta
from meshssh_policy.records import (
    GroupRecord,
    PeerRecord,
    PolicyRecord,
    RuleRecord,
    UserRecord,
    group_key,
    peer_key,
    policy_key,
    user_key,
)
from meshssh_testkit import NatsServer, ServiceProcess

PEERS, GROUPS, PER_GROUP, REACH, USERS = 5000, 100, 50, 5, 200
CHANGES, FULL_RUNS, CONCURRENCY = 20, 3, 64
TOKEN = "bench-admin-token-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
_INITIAL = re.compile(r"initial maps published .*compute_s=([\d.]+) total_s=([\d.]+)")
_API = re.compile(r"api listening .*url=(http://\S+)")


def peer_id(i: int) -> str:
    return f"p{i:05d}"


def policy_of(p: int) -> tuple[int, int]:
    """Policy p: source group, destination group."""
    src = p // REACH
    return src, (src + 1 + p % REACH) % GROUPS


async def put_all(kv: KeyValue, items: list[tuple[str, bytes]]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await kv.put(key, data)

    await asyncio.gather(*(put(k, d) for k, d in items))


async def seed_state(js: Any) -> None:
    meta = PeerMeta(
        version="0.1.0", capabilities=("native_ssh",), flags=PeerFlags(server_ssh_allowed=True)
    )
    peers = [
        (
            peer_key(peer_id(i)),
            codec.encode(
                PeerRecord(
                    id=peer_id(i),
                    name=f"peer-{i}",
                    mesh_ip=f"100.64.{i // 250}.{i % 250 + 1}",
                    meta=meta,
                    credential_hash="x" * 64,
                    ssh_host_key=HOST_KEY,
                    ssh_enabled=i % 2 == 0,
                )
            ),
        )
        for i in range(PEERS)
    ]
    users = [(user_key(f"user{u}"), codec.encode(UserRecord(id=f"user{u}"))) for u in range(USERS)]
    groups = [
        (
            group_key(f"g{g}"),
            codec.encode(
                GroupRecord(
                    id=f"g{g}",
                    peers=tuple(peer_id(i) for i in range(g * PER_GROUP, (g + 1) * PER_GROUP)),
                    users=tuple(f"user{u}" for u in range(g % 10 * 20, g % 10 * 20 + 20)),
                )
            ),
        )
        for g in range(GROUPS)
    ]
    policies = []
    for p in range(GROUPS * REACH):
        src, dst = policy_of(p)
        rule = RuleRecord(
            sources=(f"g{src}",), destinations=(f"g{dst}",), protocol="tcp", ports=("22",)
        )
        record = PolicyRecord(id=f"pol{p}", name=f"pol{p}", rules=(rule,))
        policies.append((policy_key(f"pol{p}"), codec.encode(record)))
    for bucket, items in [
        (subjects.BUCKET_USERS, users),
        (subjects.BUCKET_GROUPS, groups),
        (subjects.BUCKET_POLICIES, policies),
        (subjects.BUCKET_PEERS, peers),
    ]:
        await put_all(await open_bucket(js, bucket), items)


async def start_policy(server: NatsServer, tmp: Path) -> tuple[ServiceProcess, str]:
    proc = await ServiceProcess.start(
        "meshssh-policy",
        *server.flags("policy"),
        "--listen",
        "127.0.0.1:0",
        "--mesh-prefix",
        "100.64.0.0/10",
        "--admin-token",
        TOKEN,
        "--publish-concurrency",
        str(CONCURRENCY),
    )
    await proc.wait_ready(timeout=180)
    match = _API.search(proc.output())
    assert match, proc.output()
    return proc, match[1]


def peak_rss_mb(proc: ServiceProcess) -> float:
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class Seen:
    """Latest revision per key of a bucket, from a metadata-only watch."""

    def __init__(self) -> None:
        self.revisions: dict[str, int] = {}
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def start(self, kv: KeyValue, pattern: str) -> None:
        watcher = await kv.watch(pattern, meta_only=True)
        ready = asyncio.Event()

        async def run() -> None:
            while True:
                entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                if entry is None:
                    ready.set()
                    continue
                async with self.changed:
                    self.revisions[entry.key] = int(entry.revision)
                    self.changed.notify_all()

        self.task = asyncio.create_task(run())
        async with asyncio.timeout(60):
            await ready.wait()

    async def wait_past(self, before: dict[str, int], timeout: float = 30) -> float:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(
                lambda: all(self.revisions.get(k, 0) > r for k, r in before.items())
            )
        return time.perf_counter()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def floor_full(js: Any, maps: list[NetworkMap]) -> float:
    with contextlib.suppress(Exception):
        await js.delete_key_value("bench-floor")
    kv = await open_bucket(js, "bench-floor")
    started = time.perf_counter()
    await put_all(kv, [(f"peer.{m.peer.id}", codec.encode(m)) for m in maps])
    return time.perf_counter() - started


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="policy-scale-"))
    server = await NatsServer.start(tmp / "js")
    nc = await server.connect()
    js = nc.jetstream(timeout=30)
    procs: list[ServiceProcess] = []
    try:
        idle, _ = await start_policy(server, tmp)
        rss_idle = peak_rss_mb(idle)
        await idle.stop()
        t0 = time.perf_counter()
        await seed_state(js)
        print(f"state written to KV in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

        compute, full, floor = [], [], []
        maps_kv = await open_bucket(js, subjects.BUCKET_NETMAPS)
        maps: list[NetworkMap] = []
        for run in range(FULL_RUNS):
            with contextlib.suppress(Exception):
                await js.delete_key_value(subjects.BUCKET_NETMAPS)
            proc, api_url = await start_policy(server, tmp)
            match = _INITIAL.search(proc.output())
            assert match, proc.output()
            compute.append(float(match[1]))
            full.append(float(match[2]))
            maps_kv = await open_bucket(js, subjects.BUCKET_NETMAPS)
            if not maps:
                for i in range(PEERS):
                    entry = await maps_kv.get(subjects.netmap_key(peer_id(i)))
                    assert entry.value is not None
                    maps.append(codec.decode(entry.value, NetworkMap))
            floor.append(await floor_full(js, maps))
            if run < FULL_RUNS - 1:
                await proc.stop()
            else:
                procs.append(proc)
        sizes = [len(codec.encode(m)) for m in maps]

        seen, floor_seen = Seen(), Seen()
        await seen.start(maps_kv, subjects.NETMAP_ALL)
        floor_kv = await open_bucket(js, "bench-floor")
        await floor_seen.start(floor_kv, "peer.*")
        change, change_floor = [], []
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth) as api:
            for i in range(CHANGES):
                p = (i * 37) % (GROUPS * REACH)
                _, dst = policy_of(p)
                targets = [
                    subjects.netmap_key(peer_id(j))
                    for j in range(dst * PER_GROUP, (dst + 1) * PER_GROUP)
                ]
                before = {k: seen.revisions[k] for k in targets}
                ports = ["22", str(8000 + i)]
                started = time.perf_counter()
                rule = {
                    "sources": [f"g{p // REACH}"],
                    "destinations": [f"g{dst}"],
                    "protocol": "tcp",
                    "ports": ports,
                }
                r = await api.patch(f"/api/v1/policies/pol{p}", json={"rules": [rule]})
                assert r.status_code == 200, r.text
                change.append(await seen.wait_past(before) - started)
                # floor: the same 50 maps written and seen, nothing computed
                payload = [(k, codec.encode(maps[int(k.split(".")[1][1:])])) for k in targets]
                before = {k: floor_seen.revisions.get(k, 0) for k in targets}
                started = time.perf_counter()
                await put_all(floor_kv, payload)
                change_floor.append(await floor_seen.wait_past(before) - started)
        rss_peak = peak_rss_mb(procs[0])
        await seen.stop()
        await floor_seen.stop()
    finally:
        for proc in procs:
            await proc.stop()
        await nc.close()
        await server.stop()

    med = statistics.median
    figures = {
        "bench": "policy_scale",
        "peers": PEERS,
        "full_compute_s": round(med(compute), 3),
        "full_publish_s": round(med(full), 3),
        "full_floor_s": round(med(floor), 3),
        "full_ratio": round(med(full) / med(floor), 2),
        "change_p50_ms": round(pct(change, 0.5) * 1000, 1),
        "change_p99_ms": round(pct(change, 0.99) * 1000, 1),
        "change_floor_p50_ms": round(pct(change_floor, 0.5) * 1000, 1),
        "change_floor_p99_ms": round(pct(change_floor, 0.99) * 1000, 1),
        "change_ratio_p50": round(pct(change, 0.5) / pct(change_floor, 0.5), 2),
        "change_ratio_p99": round(pct(change, 0.99) / pct(change_floor, 0.99), 2),
        "peak_rss_mb": round(rss_peak, 1),
        "idle_rss_mb": round(rss_idle, 1),
        "rss_ratio": round(rss_peak / rss_idle, 2),
        "map_kb_avg": round(statistics.mean(sizes) / 1024, 1),
    }
    ms = 1000
    rows = [
        (
            "full compute (compile only)",
            f"{med(compute):.3f} s",
            f"{min(compute):.3f}-{max(compute):.3f}",
            "",
            "",
        ),
        (
            "full compute + publish 5,000 maps",
            f"{med(full):.3f} s",
            f"{min(full):.3f}-{max(full):.3f}",
            f"{med(floor):.3f} s",
            f"{figures['full_ratio']}x",
        ),
        (
            "change -> last affected map seen, p50",
            f"{figures['change_p50_ms']} ms",
            f"{min(change) * ms:.1f}-{max(change) * ms:.1f}",
            f"{figures['change_floor_p50_ms']} ms",
            f"{figures['change_ratio_p50']}x",
        ),
        (
            "change -> last affected map seen, p99",
            f"{figures['change_p99_ms']} ms",
            "",
            f"{figures['change_floor_p99_ms']} ms",
            f"{figures['change_ratio_p99']}x",
        ),
        (
            "peak RSS of meshssh-policy",
            f"{rss_peak:.1f} MB",
            "",
            f"{rss_idle:.1f} MB idle",
            f"{figures['rss_ratio']}x",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = ("figure", "median", "min-max", "floor", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(
        f"({PEERS} peers, {GROUPS} groups, {GROUPS * REACH} policies; "
        f"avg map {figures['map_kb_avg']} KiB; {CHANGES} changes)"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
