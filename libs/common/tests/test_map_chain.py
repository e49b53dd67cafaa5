"""Map deltas on the peer: applied to the snapshot they name, and never to another one.

Against a real nats-server: the documents are written into ``meshssh-netmaps`` as policy
writes them (a signed snapshot under ``snap.<id>.<hash>``, a signed delta under ``peer.<id>``),
and a :class:`PeerMap` follows them as sshd, the relay and the agent do.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.kv import open_bucket
from meshssh_common.logs import service_logger
from meshssh_common.map_chain import snapshot_hash
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.signed_doc import Signer
from meshssh_common.wire import MapDelta, NetworkMap, RemotePeer
from meshssh_common.wire.netmap import DELTA_FIELDS
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.signing import map_signer, write_test_pins

REMOTES = tuple(RemotePeer(id=f"r{i}", name=f"r{i}", mesh_ip=f"127.0.1.{i}") for i in range(50))


def test_a_delta_carries_every_content_field_of_a_map() -> None:
    content = {f.name for f in msgspec.structs.fields(NetworkMap)} - {"serial", "state_revisions"}
    assert set(DELTA_FIELDS) == content  # a new map field must travel in deltas too
    assert set(DELTA_FIELDS) <= {f.name for f in msgspec.structs.fields(MapDelta)}


def test_apply_replaces_only_the_fields_given() -> None:
    base = make_map(3, remote_peers=REMOTES)
    new_rules = make_map(1, ports=("2222",)).firewall_rules
    delta = MapDelta(
        serial=4,
        base_serial=3,
        base_hash=bytes(32),
        firewall_rules=new_rules,
        state_revisions={"b": 9},
    )
    whole = delta.apply(base)
    assert (whole.serial, whole.state_revisions) == (4, {"b": 9})
    assert whole.firewall_rules == new_rules
    assert whole.remote_peers == REMOTES
    assert whole.peer == base.peer
    empty = MapDelta(serial=3, base_serial=3, base_hash=bytes(32)).apply(base)
    assert empty.firewall_rules == base.firewall_rules  # a delta with no fields: the snapshot


class Writer:
    """Writes snapshots and deltas as policy does."""

    def __init__(self, nc: NATS, signer: Signer | None = None) -> None:
        self.nc = nc
        self.signer = signer or map_signer()

    def sealed(self, value: object) -> bytes:
        return codec.encode(self.signer.sign(codec.encode(value)))

    async def snapshot(self, netmap: NetworkMap, *, key_of: NetworkMap | None = None) -> bytes:
        """Store ``netmap`` as a snapshot; returns its hash. ``key_of``: store it under the key
        of that other map instead (a snapshot that is not what its key names)."""
        kv = await open_bucket(self.nc.jetstream(), subjects.BUCKET_NETMAPS)
        digest = snapshot_hash(codec.encode(netmap))
        named = snapshot_hash(codec.encode(key_of)) if key_of is not None else digest
        await kv.put(subjects.netmap_snapshot_key("p1", named), self.sealed(netmap))
        return named

    async def delta(self, serial: int, base: NetworkMap, **fields: object) -> None:
        kv = await open_bucket(self.nc.jetstream(), subjects.BUCKET_NETMAPS)
        delta = MapDelta(
            serial=serial,
            base_serial=base.serial,
            base_hash=snapshot_hash(codec.encode(base)),
            **fields,  # type: ignore[arg-type]
        )
        await kv.put(subjects.netmap_key("p1"), self.sealed(delta))


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def follower() -> tuple[PeerMap, ServiceMetrics]:
    metrics = ServiceMetrics("test")
    pins = write_test_pins(Path(tempfile.mkdtemp(prefix="pins-")))
    return PeerMap(log=service_logger("test"), metrics=metrics, pins=pins), metrics


def refused(metrics: ServiceMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "meshssh_test_signed_doc_refused_total", {"kind": "map", "reason": reason}
    )
    return value or 0.0


@pytest.fixture
async def following(nc: NATS) -> tuple[PeerMap, ServiceMetrics, Writer]:  # type: ignore[misc]
    maps, metrics = follower()
    task = asyncio.create_task(maps.follow(nc, "p1", resync_every=60))
    try:
        yield maps, metrics, Writer(nc)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_deltas_apply_to_the_snapshot_they_name_which_is_read_once(
    nc: NATS, following: tuple[PeerMap, ServiceMetrics, Writer]
) -> None:
    maps, _, writer = following
    base = make_map(3, remote_peers=REMOTES)
    snap = await writer.snapshot(base)
    await writer.delta(3, base)  # what policy writes with a new snapshot: a delta naming it
    await until(lambda: maps.serial == 3)
    assert maps.current == base
    # the snapshot is held: erase it, and the next deltas still apply
    kv = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    await kv.purge(subjects.netmap_snapshot_key("p1", snap))
    rules = make_map(1, ports=("2222",)).firewall_rules
    await writer.delta(4, base, firewall_rules=rules, state_revisions={"b": 4})
    await until(lambda: maps.serial == 4)
    assert maps.current is not None
    assert maps.current.firewall_rules == rules
    assert maps.current.remote_peers == REMOTES
    assert maps.peer_at("127.0.1.7") is not None
    await writer.delta(5, base, ssh_auth=None, peer=msgspec.structs.replace(base.peer, name="x"))
    await until(lambda: maps.serial == 5)
    assert maps.current.peer.name == "x"
    assert maps.current.firewall_rules == base.firewall_rules  # cumulative: 4's rules are gone


async def test_a_delta_whose_snapshot_is_not_stored_yet_applies_once_it_is(
    following: tuple[PeerMap, ServiceMetrics, Writer],
) -> None:
    maps, _, writer = following
    first = make_map(1)
    await writer.snapshot(first)
    await writer.delta(1, first)
    await until(lambda: maps.serial == 1)
    second = make_map(2, ssh_enabled=False, remote_peers=REMOTES)
    await writer.delta(2, second)  # names a snapshot that is not there
    await asyncio.sleep(0.5)
    assert maps.serial == 1  # the old map stays in force
    await writer.snapshot(second)
    await until(lambda: maps.serial == 2, timeout=5)  # read again within 2 s
    assert maps.current == second


async def test_a_snapshot_that_is_not_the_one_named_or_is_forged_never_applies(
    following: tuple[PeerMap, ServiceMetrics, Writer], nc: NATS
) -> None:
    maps, metrics, writer = following
    await put_map(nc, make_map(1))  # a whole map (as tests and older policies write)
    await until(lambda: maps.serial == 1)
    meant = make_map(2, sources=())  # access revoked
    wrong = make_map(2, sources=("0.0.0.0/0",))  # same serial, other content
    await writer.snapshot(wrong, key_of=meant)
    await writer.delta(3, meant)
    await asyncio.sleep(2.5)  # one re-read included
    assert maps.serial == 1
    forger = Writer(nc, Signer(Ed25519PrivateKey.generate(), kind="map"))
    await forger.snapshot(meant)
    await until(lambda: refused(metrics, "unknown_key") >= 1)
    assert maps.serial == 1
    assert maps.current is not None
    assert maps.current.firewall_rules == make_map(1).firewall_rules
    await writer.snapshot(meant)
    await until(lambda: maps.serial == 3)
    assert maps.current is not None
    assert maps.current.firewall_rules == ()
