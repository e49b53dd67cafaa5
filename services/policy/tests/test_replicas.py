"""Active-active policy replicas: who publishes which map, and a replica killed mid-change.

- rendezvous ownership: every peer has exactly one owner, the owners are balanced, and a
  replica joining moves only the peers it takes;
- :class:`Ownership` over real NATS: replicas find each other, split the peers, take over at
  once from one that leaves and within the lease from one that vanishes;
- real ``meshssh-policy`` processes on a 3-node NATS cluster (every bucket R3): two replicas
  share 501 peers; a policy change touching 500 of them is made through one replica's REST
  API and one replica is SIGKILLed (the one that answered, right after it answered, or the
  other one, while it computes): every one of the 500 peers has its final map within 5 s of
  the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter

import httpx
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from meshssh_common import codec, subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import service_logger
from meshssh_common.map_chain import MAP_DOC
from meshssh_common.signed_doc import Signer, Verifier
from meshssh_common.wire import NetworkMap, PeerFlags, PeerMeta
from meshssh_policy.ownership import Ownership, owner_of
from meshssh_policy.records import (
    GroupRecord,
    PeerRecord,
    PolicyRecord,
    RuleRecord,
    group_key,
    peer_key,
    policy_key,
)
from meshssh_testkit import NatsServer, ServiceProcess
from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.netmaps import MapAssembler
from meshssh_testkit.scrape import read_metric, wait_metric

TOKEN = "replicas-admin-token-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
DESTINATIONS = 500
FINAL_WITHIN_S = 5.0


def test_every_peer_has_one_owner_and_the_owners_are_balanced() -> None:
    members = [f"policy-{i}" for i in range(3)]
    peers = [f"p{i:05d}" for i in range(3000)]
    owners = Counter(owner_of(p, members) for p in peers)
    assert set(owners) == set(members)
    assert all(800 < n < 1200 for n in owners.values()), owners
    assert all(owner_of(p, reversed(members)) == owner_of(p, members) for p in peers[:200])


def test_a_joining_replica_moves_only_the_peers_it_takes() -> None:
    before = [f"policy-{i}" for i in range(3)]
    after = [*before, "policy-3"]
    peers = [f"p{i:05d}" for i in range(4000)]
    moved = [p for p in peers if owner_of(p, before) != owner_of(p, after)]
    assert all(owner_of(p, after) == "policy-3" for p in moved)
    assert 800 < len(moved) < 1200, len(moved)


async def test_replicas_split_the_peers_and_take_over_from_one_that_leaves_or_vanishes(
    nats_server: NatsServer,
) -> None:
    peers = {f"p{i}" for i in range(300)}
    log = service_logger("policy", "test")
    conns: list[NATS] = [await nats_server.connect("policy") for _ in range(3)]
    replicas = [
        Ownership(nc, f"m{i}", log=log, interval=0.2, lease=0.8) for i, nc in enumerate(conns)
    ]
    gained: list[set[str]] = [set() for _ in replicas]
    for i, replica in enumerate(replicas):
        replica.on_gained = gained[i].update
    tasks = [asyncio.create_task(r.run(lambda: peers)) for r in replicas]
    try:
        async with asyncio.timeout(5):
            while any(len(r.live) < 3 for r in replicas):
                await asyncio.sleep(0.02)
        owned = [{p for p in peers if r.owns(p)} for r in replicas]
        assert set.union(*owned) == peers
        assert sum(len(o) for o in owned) == len(peers)  # nobody twice

        tasks[0].cancel()  # a clean stop: it says it leaves
        await asyncio.gather(tasks[0], return_exceptions=True)
        left = time.monotonic()
        async with asyncio.timeout(5):
            while any(len(r.live) != 2 for r in replicas[1:]):
                await asyncio.sleep(0.01)
        assert time.monotonic() - left < 0.5  # not the lease: at once
        assert gained[1] | gained[2] == owned[0]

        await conns[1].close()  # vanishes: no goodbye, no more heartbeats
        vanished = time.monotonic()
        async with asyncio.timeout(5):
            while replicas[2].live != {"m2"}:
                await asyncio.sleep(0.01)
        assert 0.6 < time.monotonic() - vanished < 2.0  # after the lease
        assert all(replicas[2].owns(p) for p in peers)
        assert owned[1] <= gained[2]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in conns:
            await nc.close()


# -- real processes -------------------------------------------------------------------------


def _peer(i: int) -> PeerRecord:
    meta = PeerMeta(version="0.1.0", capabilities=("native_ssh",), flags=PeerFlags())
    return PeerRecord(
        id=f"p{i:04d}",
        name=f"peer-{i}",
        mesh_ip=f"100.64.{i // 250}.{i % 250 + 1}",
        meta=meta,
        credential_hash="x" * 64,
        ssh_host_key=HOST_KEY,
        ssh_enabled=True,
    )


def _rule(*ports: str) -> RuleRecord:
    return RuleRecord(sources=("src",), destinations=("dst",), protocol="tcp", ports=ports)


async def _open(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    """``bucket``, once its stream has a leader (a new R3 stream elects one first)."""
    kv = await open_bucket(js, bucket, replicas=replicas)
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(nats.errors.Error):
                info = await js.stream_info(f"KV_{bucket}")
                if info.cluster is None or info.cluster.leader:
                    return kv
            await asyncio.sleep(0.1)


async def seed(nc: NATS, replicas: int) -> list[str]:
    """501 peers: one in group ``src``, 500 in ``dst``; policy ``wide``: src -> dst on 22."""
    js = nc.jetstream(timeout=20)
    peers = await _open(js, subjects.BUCKET_PEERS, replicas)
    records = [_peer(i) for i in range(DESTINATIONS + 1)]
    for record in records:
        await peers.put(peer_key(record.id), codec.encode(record))
    groups = await _open(js, subjects.BUCKET_GROUPS, replicas)
    dst = tuple(r.id for r in records[1:])
    await groups.put(group_key("src"), codec.encode(GroupRecord(id="src", peers=(records[0].id,))))
    await groups.put(group_key("dst"), codec.encode(GroupRecord(id="dst", peers=dst)))
    policies = await _open(js, subjects.BUCKET_POLICIES, replicas)
    wide = PolicyRecord(id="wide", name="wide", rules=(_rule("22"),))
    await policies.put(policy_key("wide"), codec.encode(wide))
    return list(dst)


async def start_replica(cluster: NatsCluster, name: str) -> tuple[ServiceProcess, str]:
    proc = await ServiceProcess.start(
        "meshssh-policy",
        *cluster.flags("policy"),
        *("--listen", "127.0.0.1:0", "--mesh-prefix", "100.64.0.0/10"),
        *("--admin-token", TOKEN, "--instance", name, "--replica-lease", "2"),
        *("--bus-keys", str(cluster.creds("policy").parent)),
    )
    try:
        await proc.wait_ready(timeout=30)
    except BaseException:
        await proc.stop()
        raise
    found = re.search(r"api listening.*url=(http://\S+)", proc.output())
    assert found, proc.output()
    return proc, found[1]


def has_port(netmap: NetworkMap, port: str) -> bool:
    return any(rule.port == port for rule in netmap.firewall_rules)


async def wait_maps(
    nc: NATS, cluster: NatsCluster, peers: list[str], port: str, timeout: float
) -> float:
    """When (``time.monotonic()``) every peer's stored map accepts ``port`` (fails after
    ``timeout``)."""
    signing = cluster.creds("policy").parent / "map-signing.pem"  # the replicas' key
    verifier = Verifier("map", Signer.load(signing, kind="map").pins)
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    kv = TypedKV(bucket, MAP_DOC, verifier=verifier)
    maps = MapAssembler()
    missing = set(peers)
    try:
        async with asyncio.timeout(timeout):
            async for ev in kv.watch(">"):
                netmap = maps.feed(ev.key, ev.value)
                if ev.initial_done or not ev.key.startswith("peer."):
                    continue
                peer_id = ev.key.split(".", 1)[1]
                if netmap is not None and has_port(netmap, port):
                    missing.discard(peer_id)
                if not missing:
                    return time.monotonic()
    except TimeoutError:
        pass
    raise AssertionError(f"{len(missing)} of {len(peers)} peers lack the final map")


@pytest.mark.parametrize("victim", ["the-one-that-answered", "the-other-one"])
async def test_a_replica_killed_during_a_500_peer_change_leaves_no_peer_behind(
    nats_cluster: NatsCluster, victim: str
) -> None:
    logging.getLogger("meshssh").setLevel(logging.WARNING)
    nc = await nats_cluster.connect()
    procs: list[ServiceProcess] = []
    try:
        dst = await seed(nc, replicas=len(nats_cluster.nodes))
        a, api_a = await start_replica(nats_cluster, "policy-a")
        procs.append(a)
        b, _ = await start_replica(nats_cluster, "policy-b")
        procs.append(b)
        for proc in (a, b):  # each counts both as live: the maps are shared out
            await wait_metric(proc.ops_url, "meshssh_policy_replicas", 2, timeout=10)
        await wait_maps(nc, nats_cluster, dst, "22", timeout=30)
        owned = [await read_metric(p.ops_url, "meshssh_policy_owned_peers") for p in (a, b)]
        assert sum(o or 0 for o in owned) == len(dst) + 1, owned  # each peer owned once
        headers = {"Authorization": f"Bearer {TOKEN}"}
        rules = [{"sources": ["src"], "destinations": ["dst"], "protocol": "tcp"}]
        async with httpx.AsyncClient(base_url=api_a, headers=headers, timeout=30) as api:
            change = asyncio.create_task(
                api.patch(
                    "/api/v1/policies/wide", json={"rules": [{**rules[0], "ports": ["22", "2222"]}]}
                )
            )
            if victim == "the-one-that-answered":
                reply = await change
                assert reply.status_code == 200, reply.text
                a.proc.kill()
                killed = time.monotonic()
            else:
                await asyncio.sleep(0.05)  # b is computing the change now
                b.proc.kill()
                killed = time.monotonic()
                reply = await change
                assert reply.status_code == 200, reply.text
        took = await wait_maps(nc, nats_cluster, dst, "2222", timeout=FINAL_WITHIN_S + 5) - killed
        print(f"{victim} killed; all {len(dst)} final maps {took:.2f}s later (owned {owned})")
        assert took <= FINAL_WITHIN_S
    finally:
        for proc in procs:
            await proc.stop()
        await nc.close()
