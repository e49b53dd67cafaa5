"""How fast does the management plane compute 5,000 maps, and get one change to the peers?

Builds 5,000 peers in 100 groups (50 each) with 500 policies: group g may reach groups g+1..g+5
on TCP 22, so every peer reaches 250 others and is reached by 250. 200 users, half the peers
with SSH on. The state is written straight into KV, then a real ``meshssh-policy`` process
starts on a real nats-server (loopback) and computes and publishes every map.

Every one of the 5,000 peers then follows its own map key the way peers do
(:class:`~meshssh_common.key_watch.KeyWatch`: a direct get plus a plain subscription, no
JetStream consumer), ``PEERS_PER_CONN`` peers per NATS connection, in this process.

Figures, each against a reference measured in the same run, runs interleaved:

- full compute: the policy's own timing of the initial computation (compile only, and
  compile + publish of all 5,000 maps), over 5 runs (the map bucket emptied before each);
  floor: encoding the same 5,000 maps and putting them into KV with the same concurrency;
- change propagation: one REST ``PATCH`` of a policy's ports to the moment every affected
  peer (50 destinations) has the new map through its key watch, ``CHANGES`` changes; p50/p99
  of the last peer (the issue's figure: p99 <= 200 ms at 5,000 peers) and of every peer;
  one change before them warms up (its figure is printed apart: ``change_first_ms``);
  floor: putting those same 50 maps into another bucket whose keys are followed the same
  way, alternated with the changes;
- fan-out: the bench puts a new map for all 5,000 peers (policy stopped, ``CONCURRENCY``
  puts in flight) and times each put to the moment its peer has it; 5 runs; reference: the
  same puts into a bucket nobody follows, each timed to its ack;
- consumers: the JetStream consumers on ``KV_meshssh-netmaps`` while 5,000 peers follow
  (goal: 0; a KV watch per peer made one each);
- peak RSS of the policy process; floor: the peak RSS of the same process on an empty state.

Flags scale it (defaults: the figures above): ``--peers`` (in groups of ``--per-group``),
``--policies`` (policy p: group p mod G reaches group p mod G + 1 + p div G), ``--wide N``
(the policies the changes edit reach N groups, so a change touches N x per-group peers),
``--changes``, ``--full-runs``, ``--fanout-runs``, and ``--cluster`` (a 3-node NATS cluster
with R3 buckets instead of one server). It also reports policy's memory per 1,000 peers
(peak RSS over the idle RSS), the subscriptions the server holds per following peer (from
``$SYS.REQ.SERVER.PING.SUBSZ``), and nats-server's resident memory.

Run: ``.venv/bin/python bench/policy_scale.py`` (``make bench B=policy_scale``); the issue's
scale: ``--peers 20000 --policies 1000 --wide 20 --cluster``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from meshssh_common import codec, subjects
from meshssh_common.key_watch import KeyWatch, Reconnects
from meshssh_common.kv import open_bucket
from meshssh_common.signed_doc import Signer, Verifier
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
from meshssh_testkit import NatsCluster, NatsServer, ServiceProcess
from meshssh_testkit.netmaps import stored_map

PEERS, GROUPS, PER_GROUP, REACH, USERS = 5000, 100, 50, 5, 200
POLICIES, WIDE, EDITED = GROUPS * REACH, 1, 1
CHANGES, FULL_RUNS, WARM_RUNS, FANOUT_RUNS, CONCURRENCY = 40, 5, 3, 5, 64
SETTLE = 0.5  # seconds between a change and its floor (each starts from a quiet bus)
PEERS_PER_CONN, PEER_PROCS = 100, 3
SHARED_RESYNC = 600.0  # the untimed peers' safety-net re-read (scale_peers.py says why)
FLOOR_BUCKET, REF_BUCKET = "bench-floor", "bench-fanout-ref"
TOKEN = "bench-admin-token-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
_INITIAL = re.compile(r"initial maps published .*compute_s=([\d.]+) total_s=([\d.]+)")
_API = re.compile(r"api listening .*url=(http://\S+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def peer_id(i: int) -> str:
    return f"p{i:05d}"


def configure(argv: list[str]) -> argparse.Namespace:
    """Scale the bench from its flags (module constants; defaults: the 5,000-peer figures)."""
    global PEERS, GROUPS, PER_GROUP, POLICIES, WIDE, EDITED, CHANGES, FULL_RUNS, FANOUT_RUNS
    global WARM_RUNS, PEER_PROCS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--per-group", type=int, default=PER_GROUP)
    parser.add_argument("--policies", type=int, default=None, help="default: 5 per group")
    parser.add_argument("--wide", type=int, default=WIDE, help="groups an edited policy reaches")
    parser.add_argument(
        "--edited",
        type=int,
        default=EDITED,
        help="wide policies the changes edit in turn (41 with 40 changes: the old layout)",
    )
    parser.add_argument("--changes", type=int, default=CHANGES)
    parser.add_argument("--full-runs", type=int, default=FULL_RUNS)
    parser.add_argument("--warm-runs", type=int, default=WARM_RUNS, help="restarts, maps stored")
    parser.add_argument("--peer-procs", type=int, default=PEER_PROCS, help="fake-peer processes")
    parser.add_argument("--fanout-runs", type=int, default=FANOUT_RUNS)
    parser.add_argument("--cluster", action="store_true", help="3-node NATS cluster, R3")
    args = parser.parse_args(argv)
    PEERS, PER_GROUP = args.peers, args.per_group
    GROUPS = PEERS // PER_GROUP
    POLICIES = args.policies if args.policies is not None else GROUPS * REACH
    WIDE, EDITED, CHANGES = args.wide, args.edited, args.changes
    FULL_RUNS, WARM_RUNS, FANOUT_RUNS = args.full_runs, args.warm_runs, args.fanout_runs
    PEER_PROCS = args.peer_procs
    if PEERS % PER_GROUP or WIDE > GROUPS or POLICIES < 1 or FULL_RUNS < 1 or EDITED < 1:
        parser.error("--peers must be a multiple of --per-group, --wide at most the groups")
    return args


def edited_policies() -> list[int]:
    """The policies the changes edit, in turn (each reaches ``WIDE`` groups)."""
    return [(j - 1) * 37 % POLICIES for j in range(EDITED)]


def edited(p: int) -> bool:
    """Whether the changes edit policy ``p`` (those reach ``WIDE`` groups)."""
    return WIDE > 1 and p in edited_policies()


def policy_of(p: int) -> tuple[int, list[int]]:
    """Policy p: source group, destination groups."""
    if POLICIES == GROUPS * REACH:  # the original layout: group g reaches g+1..g+5
        src, first = p // REACH, p // REACH + 1 + p % REACH
    else:
        src = p % GROUPS
        first = src + 1 + p // GROUPS
    if edited(p):  # every change touches the same WIDE groups (one set of floor followers)
        return src, list(range(WIDE))
    return src, [first % GROUPS]


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
    for p in range(POLICIES):
        src, dst = policy_of(p)
        rule = RuleRecord(
            sources=(f"g{src}",),
            destinations=tuple(f"g{d}" for d in dst),
            protocol="tcp",
            ports=("22",),
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


Bus = NatsServer | NatsCluster


async def start_policy(server: Bus, tmp: Path) -> tuple[ServiceProcess, str]:
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
        "--bus-keys",  # without them policy is not ready (peers could not register)
        str(server.creds("policy").parent),
    )
    try:
        await proc.wait_ready(timeout=180)
    except BaseException:
        await proc.stop()
        raise
    match = _API.search(proc.output())
    assert match, proc.output()
    return proc, match[1]


def peak_rss_mb(proc: ServiceProcess) -> float:
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class Followers:
    """Peers that each follow their own map key with a :class:`KeyWatch` (as PeerMap does).

    ``delivered[key]`` is when the newest map of ``key`` arrived (time.monotonic), ``serials``
    its serial.
    """

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.serials: dict[str, int] = {}
        self.delivered: dict[str, float] = {}
        self._synced: set[str] = set()
        self.retries: collections.Counter[str] = (
            collections.Counter()
        )  # failing reads, once a streak
        self._expected = 0
        self._all_synced = asyncio.Event()
        self._want: dict[str, int] = {}
        self._done = asyncio.Event()
        self._conns: list[NATS] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, server: Bus, keys: list[str]) -> float:
        """Follow ``keys``; returns the seconds until every one has read its stored map.

        A connection serves 100 followers, so it is the admin identity, not a peer's.
        """
        started = time.monotonic()
        self._expected = len(keys)
        verifier = None
        if server.keys is not None:  # maps are signed (the floor's by the bench, same key)
            signer = Signer.load(server.keys.dir / "map-signing.pem", kind="map")
            verifier = Verifier("map", signer.pins)
        for i in range(0, len(keys), PEERS_PER_CONN):
            nc = await server.connect(max_reconnect_attempts=-1)
            self._conns.append(nc)
            bell = Reconnects(nc)
            for key in keys[i : i + PEERS_PER_CONN]:
                watch = KeyWatch(
                    nc,
                    self.bucket,
                    key,
                    NetworkMap,
                    version=_serial,
                    reconnects=bell,
                    verifier=verifier,
                )
                self._tasks.append(asyncio.create_task(self._follow(key, watch)))
        async with asyncio.timeout(300):
            await self._all_synced.wait()
        return time.monotonic() - started

    async def _follow(self, key: str, watch: KeyWatch[NetworkMap]) -> None:
        async for event in watch.follow(on_retry=self._retried):
            if event.synced:
                self._synced.add(key)
                if len(self._synced) >= self._expected:
                    self._all_synced.set()
            elif event.value is not None:
                self.serials[key] = event.value.serial
                self.delivered[key] = time.monotonic()
                want = self._want.get(key)
                if want is not None and event.value.serial >= want:
                    del self._want[key]
                    if not self._want:
                        self._done.set()

    def _retried(self, error: Exception) -> None:
        self.retries[type(error).__name__] += 1

    async def wait_for(self, want: dict[str, int], timeout: float = 300) -> dict[str, float]:
        """Wait until every key has a serial >= ``want``'s; returns when each arrived."""
        self._want = {k: s for k, s in want.items() if self.serials.get(k, 0) < s}
        self._done.clear()
        if self._want:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        return {k: self.delivered[k] for k in want}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for nc in self._conns:
            await nc.close()


class PeerProcs:
    """Fake peers in ``PEER_PROCS`` processes (``scale_peers.py``), with :class:`Followers`'
    interface: ``serials`` and ``delivered`` by map key, :meth:`wait_for`.

    The peers in ``own`` connect each with its own peer credentials (minted as registration
    does); the others follow ``PEERS_PER_CONN`` to an admin connection.
    """

    def __init__(self) -> None:
        self.serials: dict[str, int] = {}
        self.delivered: dict[str, float] = {}
        self.retries: collections.Counter[str] = collections.Counter()
        self._want: dict[str, int] = {}
        self._done = asyncio.Event()
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []
        self._synced: list[float] = []
        self._all_synced = asyncio.Event()

    async def start(self, server: Bus, own: list[str], shared: list[str]) -> float:
        """Start the processes; returns the seconds until every peer read its stored map."""
        assert server.keys is not None
        started = time.monotonic()
        pins = Signer.load(server.keys.dir / "map-signing.pem", kind="map").pins
        urls = server.urls if isinstance(server, NatsCluster) else [server.url]
        script = Path(__file__).with_name("scale_peers.py")
        for n in range(PEER_PROCS):
            cfg = {
                "urls": urls,
                "ca": str(server.ca) if server.ca else "",
                "pins": list(pins),
                "own": [[p, str(server.peer_creds(p))] for p in own[n::PEER_PROCS]],
                "shared": shared[n::PEER_PROCS],
                "admin_creds": str(server.creds("admin")),
                "per_conn": PEERS_PER_CONN,
                "shared_resync": SHARED_RESYNC,
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 20,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            await proc.stdin.drain()
            self._procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(proc)))
        async with asyncio.timeout(900):
            await self._all_synced.wait()
        return time.monotonic() - started

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            kind, *rest = line.decode().split()
            if kind == "D":
                key, serial, at = subjects.netmap_key(rest[0]), int(rest[1]), float(rest[2])
                if serial <= self.serials.get(key, 0):
                    continue
                self.serials[key] = serial
                self.delivered[key] = at
                want = self._want.get(key)
                if want is not None and serial >= want:
                    del self._want[key]
                    if not self._want:
                        self._done.set()
            elif kind == "R":
                self.retries[rest[0]] += 1
            elif kind == "SYNCED":
                self._synced.append(float(rest[0]))
                if len(self._synced) == len(self._procs) == PEER_PROCS:
                    self._all_synced.set()
        if not self._all_synced.is_set():
            raise RuntimeError(f"a fake-peer process ended early: {proc.returncode}")

    async def wait_for(self, want: dict[str, int], timeout: float = 300) -> dict[str, float]:
        """Wait until every key has a serial >= ``want``'s; returns when each arrived."""
        self._want = {k: s for k, s in want.items() if self.serials.get(k, 0) < s}
        self._done.clear()
        if self._want:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        return {k: self.delivered[k] for k in want}

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def stop(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def _serial(netmap: NetworkMap) -> int:
    return netmap.serial


async def netmap_consumers(nc: NATS, when: str) -> int:
    """The consumers on the map bucket's stream, from the server's JetStream API."""
    stream = f"KV_{subjects.BUCKET_NETMAPS}"
    reply = await nc.request(f"$JS.API.CONSUMER.NAMES.{stream}", b"{}", timeout=10)
    body = json.loads(reply.data)
    if "error" in body:
        raise RuntimeError(f"consumer names: {body['error']}")
    names = body.get("consumers") or []
    print(f"consumers on {stream} {when}: {body['total']} {names[:5]}", file=sys.stderr)
    return int(body["total"])


async def put_timed(
    kv: KeyValue, items: list[tuple[str, bytes]], started: dict[str, float]
) -> dict[str, float]:
    """Put ``items`` (CONCURRENCY in flight); record each put's start, return each ack time."""
    sem = asyncio.Semaphore(CONCURRENCY)
    acked: dict[str, float] = {}

    async def put(key: str, data: bytes) -> None:
        async with sem:
            started[key] = time.monotonic()
            await kv.put(key, data)
            acked[key] = time.monotonic()

    await asyncio.gather(*(put(k, d) for k, d in items))
    return acked


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def floor_full(js: Any, maps: list[NetworkMap], signer: Signer) -> float:
    """Encoding, signing and putting ``maps`` (nothing computed), timed."""
    with contextlib.suppress(Exception):
        await js.delete_key_value("bench-floor")
    kv = await open_bucket(js, "bench-floor")
    started = time.monotonic()
    await put_all(kv, [(f"peer.{m.peer.id}", signed(signer, m)) for m in maps])
    return time.monotonic() - started


def signed(signer: Signer, netmap: NetworkMap) -> bytes:
    """``netmap`` as policy stores it: a SignedDoc."""
    return codec.encode(signer.sign(codec.encode(netmap)))


async def read_maps(nc: NATS, verifier: Verifier) -> list[NetworkMap]:
    """Every peer's stored map, read as its peer reads it (64 reads in flight)."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> NetworkMap:
        async with sem:
            netmap = await stored_map(nc, peer_id(i), verifier)
        assert netmap is not None
        return netmap

    return list(await asyncio.gather(*(one(i) for i in range(PEERS))))


def change_targets(i: int) -> tuple[int, list[str]]:
    """Change ``i`` (from -1): the policy it edits and the map keys of the peers it affects."""
    p = edited_policies()[(i + 1) % EDITED]
    _, dst = policy_of(p)
    keys = [
        subjects.netmap_key(peer_id(j))
        for d in dst
        for j in range(d * PER_GROUP, (d + 1) * PER_GROUP)
    ]
    return p, keys


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLOCK_TICKS


def nats_pids(server: Bus) -> list[int]:
    nodes = server.nodes if isinstance(server, NatsCluster) else [server]
    return [node.proc.pid for node in nodes if node.proc is not None]


async def subscriptions(server: Bus) -> int:
    """Subscriptions the servers hold (each node's count, summed)."""
    nc = await server.connect("system")
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SYS.REQ.SERVER.PING.SUBSZ", b"{}", reply=inbox)
        total, nodes = 0, len(nats_pids(server))
        for _ in range(nodes):
            msg = await sub.next_msg(timeout=5)
            total += int(json.loads(msg.data)["data"]["num_subscriptions"])
        await sub.unsubscribe()
        return total
    finally:
        await nc.close()


def bumped(
    maps: dict[str, NetworkMap], serials: dict[str, int], keys: list[str], signer: Signer
) -> list[Any]:
    """Each key's map with the serial after the one its follower holds, signed."""
    return [
        (k, signed(signer, msgspec.structs.replace(maps[k], serial=serials[k] + 1))) for k in keys
    ]


async def main() -> int:
    args = configure(sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="policy-scale-"))
    server: Bus = (
        await NatsCluster.start(tmp / "nats")
        if args.cluster
        else await NatsServer.start(tmp / "js")
    )
    nc = await server.connect()
    js = nc.jetstream(timeout=30)
    procs: list[ServiceProcess] = []
    peers = PeerProcs()
    floor_peers = Followers(FLOOR_BUCKET)
    try:
        idle, _ = await start_policy(server, tmp)
        rss_idle = peak_rss_mb(idle)
        await idle.stop()
        t0 = time.monotonic()
        await seed_state(js)
        print(f"state written to KV in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        assert server.keys is not None
        signer = Signer.load(server.keys.dir / "map-signing.pem", kind="map")

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
                maps = await read_maps(nc, Verifier("map", signer.pins))
            floor.append(await floor_full(js, maps, signer))
            print(
                f"cold run {run + 1}/{FULL_RUNS}: {full[-1]:.2f}s (compile {compute[-1]:.2f}s)",
                file=sys.stderr,
            )
            await proc.stop()
        warm, warm_compute = [], []
        for run in range(WARM_RUNS + 1):  # the last one stays up for the changes
            proc, api_url = await start_policy(server, tmp)
            match = _INITIAL.search(proc.output())
            assert match, proc.output()
            if run < WARM_RUNS:
                warm_compute.append(float(match[1]))
                warm.append(float(match[2]))
                print(f"warm run {run + 1}/{WARM_RUNS}: {warm[-1]:.2f}s", file=sys.stderr)
                await proc.stop()
            else:
                procs.append(proc)
        sizes = [len(codec.encode(m)) for m in maps]
        by_key = {subjects.netmap_key(m.peer.id): m for m in maps}

        keys = [subjects.netmap_key(peer_id(i)) for i in range(PEERS)]
        floor_keys = sorted({k for i in range(-1, CHANGES) for k in change_targets(i)[1]})
        consumers_before = await netmap_consumers(nc, "before the peers follow")
        subs_before = await subscriptions(server)
        nats_idle = sum(rss_mb(pid) for pid in nats_pids(server))
        own = set(floor_keys)
        sync_s = await peers.start(
            server,
            [k.split(".", 1)[1] for k in floor_keys],
            [k.split(".", 1)[1] for k in keys if k not in own],
        )
        subs_per_peer = (await subscriptions(server) - subs_before) / PEERS
        print(
            f"{PEERS} peers following ({len(own)} with their own connection and peer "
            f"credentials), read in {sync_s:.1f}s "
            f"(failing reads, once per streak, then retried: {dict(peers.retries)})",
            file=sys.stderr,
        )
        await floor_peers.start(server, floor_keys)
        floor_kv = await open_bucket(js, FLOOR_BUCKET)
        change: list[float] = []
        change_floor: list[float] = []
        each: list[float] = []
        first_peer: list[float] = []  # the fixed part: REST, state write, compile, one put
        each_floor: list[float] = []
        first_change = 0.0
        # CPU per change of policy, nats-server and the fake peers: what the latency is on
        # a machine where they do not wait for a core (this one is shared and loaded)
        cpu_pids = [[procs[0].proc.pid], nats_pids(server), peers.pids()]
        cpu: list[list[float]] = [[], [], []]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth) as api:
            for i in range(-1, CHANGES):  # change -1 warms up (HTTP connection), not counted
                p, targets = change_targets(i)
                src, dst = policy_of(p)
                waiter = asyncio.create_task(
                    peers.wait_for({k: peers.serials[k] + 1 for k in targets})
                )
                rule = {
                    "sources": [f"g{src}"],
                    "destinations": [f"g{d}" for d in dst],
                    "protocol": "tcp",
                    "ports": ["22", str(8000 + i)],
                }
                await asyncio.sleep(SETTLE)  # the floor's writes before it are flushed
                cpu0 = [cpu_s(pids) for pids in cpu_pids]
                started = time.monotonic()
                r = await api.patch(f"/api/v1/policies/pol{p}", json={"rules": [rule]})
                assert r.status_code == 200, r.text
                arrived = await waiter
                if i >= 0:
                    for n, pids in enumerate(cpu_pids):
                        cpu[n].append(cpu_s(pids) - cpu0[n])
                last = max(arrived.values()) - started
                print(f"change {i + 1}/{CHANGES}: last peer {last * 1000:.0f} ms", file=sys.stderr)
                if i < 0:
                    first_change = max(arrived.values()) - started
                else:
                    change.append(max(arrived.values()) - started)
                    each.extend(t - started for t in arrived.values())
                    first_peer.append(min(arrived.values()) - started)
                # floor: the same 50 maps put and delivered the same way, nothing computed
                payload = bumped(by_key, floor_peers.serials, targets, signer)
                await asyncio.sleep(SETTLE)  # the same pause before either side
                waiter = asyncio.create_task(
                    floor_peers.wait_for({k: floor_peers.serials[k] + 1 for k in targets})
                )
                started = time.monotonic()
                await put_all(floor_kv, payload)
                arrived = await waiter
                if i >= 0:
                    change_floor.append(max(arrived.values()) - started)
                    each_floor.extend(t - started for t in arrived.values())
        consumers = await netmap_consumers(nc, f"while {PEERS} peers follow")
        rss_peak = peak_rss_mb(procs[0])
        rss_now = rss_mb(procs[0].proc.pid)
        nats_rss = sum(rss_mb(pid) for pid in nats_pids(server))
        nats_hwm = sum(rss_mb(pid, "VmHWM:") for pid in nats_pids(server))
        await procs.pop().stop()  # fan-out: the bench is the only writer

        ref_kv = await open_bucket(js, REF_BUCKET)
        fan: list[float] = []
        fan_total: list[float] = []
        ref: list[float] = []
        ref_total: list[float] = []
        for run in range(FANOUT_RUNS):
            items = bumped(by_key, peers.serials, keys, signer)
            waiter = asyncio.create_task(
                peers.wait_for({k: peers.serials[k] + 1 for k in keys}, timeout=300)
            )
            put_at: dict[str, float] = {}
            t0 = time.monotonic()
            await put_timed(maps_kv, items, put_at)
            arrived = await waiter
            fan.extend(arrived[k] - put_at[k] for k in keys)
            fan_total.append(max(arrived.values()) - t0)
            put_at = {}
            t0 = time.monotonic()
            acked = await put_timed(ref_kv, items, put_at)
            ref.extend(acked[k] - put_at[k] for k in keys)
            ref_total.append(max(acked.values()) - t0)
            print(
                f"fan-out run {run + 1}/{FANOUT_RUNS}: {fan_total[-1]:.2f}s "
                f"(reference {ref_total[-1]:.2f}s)",
                file=sys.stderr,
            )
        if not fan:  # --fanout-runs 0: the figures are null
            fan = fan_total = ref = ref_total = [math.nan]
        consumers = max(consumers, await netmap_consumers(nc, "after the fan-out"))
        print(
            f"failing reads (once per streak): {dict(peers.retries + floor_peers.retries)}",
            file=sys.stderr,
        )
    finally:
        await peers.stop()
        await floor_peers.stop()
        for proc in procs:
            await proc.stop()
        await nc.close()
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    ms = 1000
    figures = {
        "bench": "policy_scale",
        "peers": PEERS,
        "policies": POLICIES,
        "nats": "cluster-3-R3" if args.cluster else "single",
        "affected_per_change": len(change_targets(0)[1]),
        "full_compute_s": round(med(compute), 3),
        "full_publish_s": round(med(full), 3),
        "full_floor_s": round(med(floor), 3),
        "full_ratio": round(med(full) / med(floor), 2),
        "warm_compute_s": round(med(warm_compute), 3) if warm else None,
        "warm_total_s": round(med(warm), 3) if warm else None,
        "change_p50_ms": round(pct(change, 0.5) * ms, 1),
        "change_p99_ms": round(pct(change, 0.99) * ms, 1),
        "change_floor_p50_ms": round(pct(change_floor, 0.5) * ms, 1),
        "change_floor_p99_ms": round(pct(change_floor, 0.99) * ms, 1),
        "change_ratio_p50": round(pct(change, 0.5) / pct(change_floor, 0.5), 2),
        "change_ratio_p99": round(pct(change, 0.99) / pct(change_floor, 0.99), 2),
        "change_first_ms": round(first_change * ms, 1),
        "change_cpu_policy_ms": round(med(cpu[0]) * ms, 1),
        "change_cpu_nats_ms": round(med(cpu[1]) * ms, 1),
        "change_cpu_peers_ms": round(med(cpu[2]) * ms, 1),
        "load_average": os.getloadavg()[0],
        "change_each_p99_ms": round(pct(each, 0.99) * ms, 1),
        "change_each_p50_ms": round(pct(each, 0.5) * ms, 1),
        "change_first_peer_p50_ms": round(med(first_peer) * ms, 1),
        "change_each_floor_p99_ms": round(pct(each_floor, 0.99) * ms, 1),
        "fanout_p50_ms": round(pct(fan, 0.5) * ms, 1),
        "fanout_p99_ms": round(pct(fan, 0.99) * ms, 1),
        "fanout_ref_p50_ms": round(pct(ref, 0.5) * ms, 1),
        "fanout_ref_p99_ms": round(pct(ref, 0.99) * ms, 1),
        "fanout_ratio_p99": round(pct(fan, 0.99) / pct(ref, 0.99), 2),
        "fanout_total_s": round(med(fan_total), 3),
        "fanout_ref_total_s": round(med(ref_total), 3),
        "follow_sync_s": round(sync_s, 2),
        "netmap_consumers": consumers,
        "netmap_consumers_before_peers": consumers_before,
        "peak_rss_mb": round(rss_peak, 1),
        "rss_after_changes_mb": round(rss_now, 1),
        "own_connection_peers": len(own),
        "peer_procs": PEER_PROCS,
        "idle_rss_mb": round(rss_idle, 1),
        "rss_ratio": round(rss_peak / rss_idle, 2),
        "map_kb_avg": round(statistics.mean(sizes) / 1024, 1),
        "map_kb_max": round(max(sizes) / 1024, 1),
        "policy_mb_per_1000_peers": round((rss_now - rss_idle) / (PEERS / 1000), 2),
        "policy_peak_mb_per_1000_peers": round((rss_peak - rss_idle) / (PEERS / 1000), 2),
        "subscriptions_per_peer": round(subs_per_peer, 2),
        "nats_rss_mb": round(nats_rss, 1),
        "nats_peak_rss_mb": round(nats_hwm, 1),
        "nats_idle_rss_mb": round(nats_idle, 1),
    }
    rows = [
        (
            "full compute, bucket empty (compile + digest)",
            f"{med(compute):.3f} s",
            f"{min(compute):.3f}-{max(compute):.3f}",
            "",
            "",
        ),
        (
            "full compute, maps stored (restart): compile+digest / total",
            f"{med(warm_compute):.3f} / {med(warm):.3f} s" if warm else "-",
            f"{min(warm):.3f}-{max(warm):.3f}" if warm else "",
            "",
            "",
        ),
        (
            f"full compute + sign + publish {PEERS:,} maps (bucket empty)",
            f"{med(full):.3f} s",
            f"{min(full):.3f}-{max(full):.3f}",
            f"{med(floor):.3f} s",
            f"{figures['full_ratio']}x",
        ),
        (
            "change -> last affected peer has it, p50",
            f"{figures['change_p50_ms']} ms",
            f"{min(change) * ms:.1f}-{max(change) * ms:.1f}",
            f"{figures['change_floor_p50_ms']} ms",
            f"{figures['change_ratio_p50']}x",
        ),
        (
            "change -> last affected peer has it, p99",
            f"{figures['change_p99_ms']} ms",
            "",
            f"{figures['change_floor_p99_ms']} ms",
            f"{figures['change_ratio_p99']}x",
        ),
        (
            "change -> each affected peer has it, p99",
            f"{figures['change_each_p99_ms']} ms",
            "",
            f"{figures['change_each_floor_p99_ms']} ms",
            "",
        ),
        (
            "change -> first / each (p50) affected peer has it",
            f"{figures['change_first_peer_p50_ms']} / {figures['change_each_p50_ms']} ms",
            "",
            "",
            "",
        ),
        (
            "CPU per change: policy / nats-server / fake peers (median)",
            f"{figures['change_cpu_policy_ms']} / {figures['change_cpu_nats_ms']} / "
            f"{figures['change_cpu_peers_ms']} ms",
            "",
            "",
            "",
        ),
        (
            "fan-out: put -> its peer has it, p50",
            f"{figures['fanout_p50_ms']} ms",
            "",
            f"{figures['fanout_ref_p50_ms']} ms ack",
            "",
        ),
        (
            "fan-out: put -> its peer has it, p99",
            f"{figures['fanout_p99_ms']} ms",
            f"{min(fan) * ms:.1f}-{max(fan) * ms:.1f}",
            f"{figures['fanout_ref_p99_ms']} ms ack",
            f"{figures['fanout_ratio_p99']}x",
        ),
        (
            f"fan-out: all {PEERS:,} peers have it",
            f"{med(fan_total):.3f} s",
            f"{min(fan_total):.3f}-{max(fan_total):.3f}",
            f"{med(ref_total):.3f} s acked",
            f"{round(med(fan_total) / med(ref_total), 2)}x",
        ),
        (
            f"JetStream consumers on the map bucket, {PEERS} peers following",
            str(consumers),
            "",
            f"{consumers_before} before they followed",
            "",
        ),
        (
            "subscriptions on the servers per following peer",
            str(figures["subscriptions_per_peer"]),
            "",
            "",
            "",
        ),
        (
            "nats-server RSS (all nodes), peers following",
            f"{nats_rss:.1f} MB",
            "",
            f"{nats_idle:.1f} MB before they followed",
            "",
        ),
        (
            "RSS of meshssh-policy after the changes",
            f"{rss_now:.1f} MB",
            "",
            f"{rss_idle:.1f} MB idle",
            f"{figures['policy_mb_per_1000_peers']} MB per 1,000 peers",
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
    header = ("figure", "median", "min-max", "reference", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(
        f"({PEERS} peers following by key watch in {PEER_PROCS} processes, {len(own)} with "
        f"their own connection and credentials, the others {PEERS_PER_CONN} per connection; "
        f"{GROUPS} groups, {POLICIES} policies, {figures['affected_per_change']} peers per "
        f"change; avg map {figures['map_kb_avg']} KiB; "
        f"{CHANGES} changes, {FULL_RUNS} full runs, {FANOUT_RUNS} fan-out runs)"
    )
    print(json.dumps({k: None if v != v else v for k, v in figures.items()}))  # NaN: null
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
