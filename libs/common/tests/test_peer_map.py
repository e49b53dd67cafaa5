"""The map follower against a real nats-server: serial check, delete, resync, no bucket made."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

import nats
import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.signed_doc import Signer, new_signing_key, write_pins
from meshssh_common.wire import NetworkMap, Pins, RemotePeer
from meshssh_testkit import NatsServer
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.signing import jwks_signer, write_test_pins


def new_map(pins: Path | None = None) -> tuple[PeerMap, list[tuple[int, int]], ServiceMetrics]:
    """A PeerMap and the (old, new) serials its listener saw (0: no map).

    It pins the test signers' keys unless ``pins`` says otherwise.
    """
    metrics = ServiceMetrics("test")
    if pins is None:
        pins = write_test_pins(Path(tempfile.mkdtemp(prefix="pins-")))
    maps = PeerMap(log=service_logger("test"), metrics=metrics, pins=pins)
    seen: list[tuple[int, int]] = []
    maps.on_change(
        lambda old, new: seen.append((old.serial if old else 0, new.serial if new else 0))
    )
    return maps, seen, metrics


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def test_only_a_higher_serial_applies_and_a_delete_starts_over() -> None:
    maps, seen, _ = new_map()
    assert maps.offer(make_map(3))
    assert not maps.offer(make_map(2, ssh_enabled=False))  # stale
    assert not maps.offer(make_map(3, ssh_enabled=False))  # replayed
    assert maps.ssh_enabled
    assert maps.serial == 3
    assert maps.drop()
    assert not maps.drop()  # nothing held: no second notification
    assert not maps.ssh_enabled
    assert maps.offer(make_map(1))  # a re-registered peer's maps start over at 1
    assert seen == [(0, 3), (3, 0), (0, 1)]


def test_a_failing_listener_does_not_stop_the_others() -> None:
    maps, seen, _ = new_map()

    def broken(old: NetworkMap | None, new: NetworkMap | None) -> None:
        raise RuntimeError("listener bug")

    maps.on_change(broken)
    maps.on_change(lambda old, new: seen.append((-1, -1)))
    assert maps.offer(make_map(1))
    assert seen == [(0, 1), (-1, -1)]
    assert maps.current is not None


def test_peer_at_finds_a_peer_by_its_mesh_address() -> None:
    maps, _, _ = new_map()
    assert maps.peer_at("127.0.0.9") is None
    remote = RemotePeer(id="p9", name="p9", mesh_ip="127.0.0.9", ssh_enabled=True)
    maps.offer(make_map(1, remote_peers=[remote]))
    assert maps.peer_at("127.0.0.9") == remote
    assert maps.peer_at("127.0.0.8") is None


async def test_follow_waits_for_the_bucket_and_never_creates_it(nc: NATS) -> None:
    maps, seen, _ = new_map()
    task = asyncio.create_task(maps.follow(nc, "p1"))
    try:
        assert not await maps.wait_received(0.6)
        with pytest.raises(nats.js.errors.BucketNotFoundError):
            await nc.jetstream().key_value(subjects.BUCKET_NETMAPS)
        await put_map(nc, make_map(2))  # the management plane makes the bucket
        assert await maps.wait_received(5.0)
        await until(lambda: maps.serial == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [(0, 2)]


async def test_follow_applies_changes_deletes_and_counts_bad_values(nc: NATS) -> None:
    kv = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    await put_map(nc, make_map(5))
    await put_map(nc, make_map(1, peer_id="p2"))  # another peer's key is not ours
    maps, seen, metrics = new_map()
    task = asyncio.create_task(maps.follow(nc, "p1"))
    try:
        assert await maps.wait_received(5.0)
        assert maps.serial == 5
        await kv.put(subjects.netmap_key("p1"), b"not a map")
        await put_map(nc, make_map(4))  # stale: ignored
        await put_map(nc, make_map(6, ssh_enabled=False))
        await until(lambda: maps.serial == 6)
        assert not maps.ssh_enabled
        await kv.delete(subjects.netmap_key("p1"))
        await until(lambda: maps.current is None)
        await put_map(nc, make_map(1))  # re-registered
        await until(lambda: maps.serial == 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [(0, 5), (5, 6), (6, 0), (0, 1)]
    bad = metrics.registry.get_sample_value(
        "meshssh_test_signed_doc_refused_total", {"kind": "map", "reason": "undecodable"}
    )
    assert bad == 1


def refused(metrics: ServiceMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "meshssh_test_signed_doc_refused_total", {"kind": "map", "reason": reason}
    )
    return value or 0.0


async def test_a_map_signed_with_a_wrong_key_is_refused_counted_and_the_old_one_stays(
    nc: NATS,
) -> None:
    await put_map(nc, make_map(1))
    maps, seen, metrics = new_map()
    task = asyncio.create_task(maps.follow(nc, "p1"))
    try:
        assert await maps.wait_received(5.0)
        await until(lambda: maps.serial == 1)
        forger = Signer(Ed25519PrivateKey.generate(), kind="map")
        await put_map(nc, make_map(2, ssh_enabled=False, sources=()), signer=forger)
        await until(lambda: refused(metrics, "unknown_key") == 1)
        # a JWKS document is never taken for a map
        await put_map(nc, make_map(3, ssh_enabled=False), signer=jwks_signer())
        await until(lambda: refused(metrics, "bad_signature") == 1)
        assert refused(metrics, "unknown_key") == 1
        assert maps.serial == 1
        assert maps.ssh_enabled
        assert maps.current is not None
        assert maps.current.firewall_rules
        await put_map(nc, make_map(4))  # the real signer again
        await until(lambda: maps.serial == 4)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [(0, 1), (1, 4)]


async def test_without_pins_no_map_from_the_bus_applies(nc: NATS, tmp_path: Path) -> None:
    await put_map(nc, make_map(1))
    maps, seen, metrics = new_map(tmp_path / "missing.json")
    task = asyncio.create_task(maps.follow(nc, "p1"))
    try:
        assert await maps.wait_received(5.0)
        await until(lambda: refused(metrics, "no_pins") == 1)
        assert maps.current is None
        assert maps.offer(make_map(1))  # the registration reply's map needs no signature
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [(0, 1)]


async def test_an_endorsed_new_key_is_accepted_with_the_old_pins(nc: NATS, tmp_path: Path) -> None:
    old = tmp_path / "map-signing.pem"
    new_signing_key(old)
    write_pins(tmp_path / "pins.json", Pins(map=Signer.load(old, kind="map").pins))
    new_signing_key(old, rotate=True)
    rotated = Signer.load(old, kind="map")  # signs with the new key, endorsed by the old
    await put_map(nc, make_map(1), signer=rotated)
    maps, _, metrics = new_map(tmp_path / "pins.json")
    task = asyncio.create_task(maps.follow(nc, "p1"))
    try:
        await until(lambda: maps.serial == 1)
        write_pins(tmp_path / "pins.json", Pins(map=(rotated.public_key,)))  # a renewal
        await put_map(nc, make_map(2), signer=Signer.load(old, kind="map"))
        await until(lambda: maps.serial == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert refused(metrics, "unknown_key") == 0


async def test_follow_resyncs_after_nats_restarts(nats_server: NatsServer) -> None:
    nc = await nats_server.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await put_map(nc, make_map(1))
        maps, seen, _ = new_map()
        task = asyncio.create_task(maps.follow(nc, "p1"))
        try:
            assert await maps.wait_received(5.0)
            await nats_server.restart()
            await until(lambda: nc.is_connected, 10.0)
            await put_map(nc, make_map(2, ssh_enabled=False))
            # well under the ~15 s a plain watch can stay silent after a restart
            await until(lambda: maps.serial == 2, 5.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert seen == [(0, 1), (1, 2)]  # the replayed serial 1 was not applied twice
    finally:
        await nc.close()
