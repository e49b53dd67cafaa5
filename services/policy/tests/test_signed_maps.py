"""Policy signs every map, opens only a JWKS document authn signed, and hands out the pins.

Rotation end to end at policy: ``meshssh-policy init --rotate map-signing`` (or
``jwks-signing``), restart the replica: a peer that still pins the old key accepts the new
maps at once (the old key endorses the new one), and its next renewal brings the new pins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_common.signed_doc import Refused, Signer, Verifier
from meshssh_common.wire import JwksSnapshot, JwtConfig, NetworkMap
from meshssh_testkit import NatsServer, run_command_sync, script
from meshssh_testkit.netmaps import stored_map as whole_map
from meshssh_testkit.signing import signed_jwks

from .conftest import bus_jwks_signer, bus_map_signer

SERVER_KEY = "meshssh-demo-server-key-0001"
REFUSED = "meshssh_policy_signed_doc_refused_total"


def bus_dir(nats_server: NatsServer) -> Path:
    assert nats_server.keys is not None
    return nats_server.keys.dir


def rotate(directory: Path, key: str) -> None:
    result = run_command_sync(
        script("meshssh-policy"), "init", "--dir", str(directory), "--rotate", key, timeout=30
    )
    assert result.returncode == 0, result.err
    assert f"rotated {key}: new public key" in result.out


async def stored_map(nc: NATS, peer_id: str, verifier: Verifier) -> NetworkMap:
    netmap = await whole_map(nc, peer_id, verifier)
    assert netmap is not None
    return netmap


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_registration_hands_out_the_pins_and_maps_verify_with_them(
    policy: Any, register: Any, seed_file: Any, nc: NATS, nats_server: NatsServer
) -> None:
    await policy.start(seed=seed_file)
    reply = await register("srv1", "127.0.0.2", SERVER_KEY)
    assert reply.pins.map == (bus_map_signer(nats_server).public_key,)
    pub = (bus_dir(nats_server) / "jwks-signing.pub").read_text().split()
    assert reply.pins.jwks == tuple(pub) == (bus_jwks_signer(nats_server).public_key,)
    netmap = await stored_map(nc, reply.peer_id, Verifier("map", reply.pins.map))
    assert netmap.peer.id == reply.peer_id
    forged = Verifier("map", (Signer(Ed25519PrivateKey.generate(), kind="map").public_key,))
    with pytest.raises(Refused) as refused:
        await stored_map(nc, reply.peer_id, forged)
    assert refused.value.why == "unknown_key"


async def test_map_signing_rotation_old_pins_accept_new_maps_and_renewal_brings_new_pins(
    policy: Any, register: Any, seed_file: Any, nc: NATS, nats_server: NatsServer
) -> None:
    replica = await policy.start(seed=seed_file)
    first = await register("srv1", "127.0.0.2", SERVER_KEY)
    old_pins = first.pins.map
    assert await replica.stop() == 0
    rotate(bus_dir(nats_server), "map-signing")
    assert (bus_dir(nats_server) / "map-signing.pem.previous").exists()
    replica = await policy.start("r1-rotated")
    async with replica.client() as api:
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": False})
        assert r.status_code == 200

    async def new_map_arrived() -> bool:
        netmap = await stored_map(nc, first.peer_id, Verifier("map", old_pins))  # endorsed
        return netmap.serial > first.netmap.serial

    await until(new_map_arrived)
    renewed = await register(
        "srv1", "127.0.0.2", peer_id=first.peer_id, credential=first.credential
    )
    new_key = bus_map_signer(nats_server).public_key
    assert renewed.pins.map == (new_key, old_pins[0])  # the new key first, the old one kept
    await stored_map(nc, first.peer_id, Verifier("map", (new_key,)))  # without the endorsement


async def test_policy_opens_only_a_jwks_document_with_a_pinned_key_and_follows_rotation(
    policy: Any,
    register: Any,
    seed_file: Any,
    nc: NATS,
    nats_server: NatsServer,
    map_watch: Any,
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = await register("srv1", "127.0.0.2", SERVER_KEY)
    kv = await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS)
    good = JwtConfig(issuer="http://127.0.0.1:8081", audiences=("meshssh",))
    await kv.put(
        subjects.JWKS_KEY, signed_jwks(JwksSnapshot(jwt=good), bus_jwks_signer(nats_server))
    )
    await map_watch.wait(lambda: map_watch.latest(srv.peer_id).peer.jwt == good)

    forger = Signer(Ed25519PrivateKey.generate(), kind="jwks")
    evil = JwtConfig(issuer="http://evil.example", audiences=("meshssh",))
    await kv.put(subjects.JWKS_KEY, signed_jwks(JwksSnapshot(jwt=evil), forger))

    async def counted() -> bool:
        return replica.metric(REFUSED, kind="jwks", reason="unknown_key") == 1

    await until(counted)
    await asyncio.sleep(0.3)  # time for a wrongly applied snapshot to reach the map
    assert map_watch.latest(srv.peer_id).peer.jwt == good  # the old snapshot stays in force

    old_pins = srv.pins.jwks
    assert await replica.stop() == 0
    rotate(bus_dir(nats_server), "jwks-signing")
    replica = await policy.start("r1-rotated")
    renewed = await register("srv1", "127.0.0.2", peer_id=srv.peer_id, credential=srv.credential)
    new_key = bus_jwks_signer(nats_server).public_key
    assert renewed.pins.jwks == (new_key, old_pins[0])
    rotated = JwtConfig(issuer="http://127.0.0.1:8082", audiences=("meshssh",))
    # authn after the rotation: the new key, endorsed by the old one
    await kv.put(
        subjects.JWKS_KEY, signed_jwks(JwksSnapshot(jwt=rotated), bus_jwks_signer(nats_server))
    )
    await map_watch.wait(lambda: map_watch.latest(srv.peer_id).peer.jwt == rotated)
    verifier = Verifier("jwks", old_pins)  # a peer that has not renewed yet accepts it too
    entry = await kv.get(subjects.JWKS_KEY)
    assert verifier.open_as(entry.value, JwksSnapshot).jwt == rotated
