"""Peers' bus identities: REST registration mints their NATS JWT, removal revokes it.

Against a real nats-server with JWT auth on and real policy replicas that connect as the policy
identity and push revocations with ``system.creds``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from meshssh_common import subjects
from meshssh_common.bus_permissions import gateway_permissions, inbox_prefix, peer_permissions
from meshssh_common.errors import BadRequest, ConfigError, Denied
from meshssh_common.nats_jwt import Key, Prefix, decode_claims, new_key, write_creds
from meshssh_common.wire import NetworkMap, RegisterReply
from meshssh_testkit import NatsServer
from meshssh_testkit.netmaps import stored_map

from .conftest import PolicyFactory, Replica, connect_as, register_rest

SERVER_KEY = "meshssh-demo-server-key-0001"
LAPTOP_KEY = "meshssh-demo-laptop-key-0001"


@pytest.fixture(autouse=True)
async def direct_maps(nc: NATS) -> None:
    """The map bucket answers direct gets, as peers read it (made before policy opens it)."""
    await nc.jetstream().create_key_value(
        KeyValueConfig(bucket=subjects.BUCKET_NETMAPS, history=1, direct=True)
    )


async def start(policy: PolicyFactory, seed_file: Path, **kw: Any) -> Replica:
    return await policy.start(seed=seed_file, **kw)


async def connect_peer(server: NatsServer, tmp_path: Path, key: Key, jwt: str) -> NATS:
    """Connect with a peer's creds file (its seed and the JWT policy minted)."""
    creds = tmp_path / f"{key.public[:12]}.creds"
    write_creds(creds, jwt, key.seed)
    return await connect_as(server, creds)


async def direct_get_map(nc: NATS, peer_id: str) -> NetworkMap:
    """A peer's read of its own map over its own connection: direct gets of its key and of the
    snapshot a delta names (no consumer). Not verified here (test_signed_maps does that)."""
    netmap = await stored_map(nc, peer_id)
    assert netmap is not None
    return netmap


def _cut_off(nc: NATS) -> bool:
    error = str(nc.last_error).lower()
    # closed on the server's "user authentication revoked"; or, had the socket gone first, every
    # reconnect refused
    return nc.is_closed or "revoked" in error or ("authorization" in error and not nc.is_connected)


async def closed_by_revocation(nc: NATS, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until the server has cut ``nc`` off for a revoked identity."""
    try:
        async with asyncio.timeout(timeout):
            while not _cut_off(nc):
                await asyncio.sleep(0.02)
    except TimeoutError:
        state = f"connected={nc.is_connected} closed={nc.is_closed} last_error={nc.last_error!r}"
        raise AssertionError(f"still on the bus after {timeout}s: {state}") from None


async def test_registration_returns_a_jwt_for_the_peer_key_with_exactly_the_peer_permissions(
    policy: PolicyFactory, nats_server: NatsServer, seed_file: Path, tmp_path: Path
) -> None:
    replica = await start(policy, seed_file)
    keys = nats_server.keys
    assert keys is not None
    key = new_key(Prefix.USER)
    before = time.time()
    reply = await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY, nats_key=key)
    claims = decode_claims(reply.nats_jwt)
    assert claims["sub"] == key.public
    assert claims["name"] == f"peer-{reply.peer_id}"
    assert claims["nats"]["issuer_account"] == keys.account
    want = peer_permissions(reply.peer_id, inbox_prefix(key.public)).claims()
    assert {k: claims["nats"][k] for k in ("pub", "sub")} == want
    assert "resp" not in claims["nats"]
    assert claims["exp"] == reply.nats_expires_at
    assert before + 43200 - 2 <= reply.nats_expires_at <= time.time() + 43200 + 1
    assert replica.metric("meshssh_policy_peer_creds_issued_total") == 1
    async with replica.client() as api:
        shown = (await api.get(f"/api/v1/peers/{reply.peer_id}")).json()
    assert shown["nats_key"] == key.public

    nc = await connect_peer(nats_server, tmp_path, key, reply.nats_jwt)
    try:
        netmap = await direct_get_map(nc, reply.peer_id)
        assert netmap.peer.id == reply.peer_id
        assert netmap.peer.mesh_ip == "127.0.0.2"
    finally:
        await nc.close()


async def test_a_gateway_setup_keys_peers_get_the_gateway_permissions_and_keep_them(
    policy: PolicyFactory, seed_file: Path
) -> None:
    replica = await start(policy, seed_file)
    async with replica.client() as api:
        r = await api.post("/api/v1/setup-keys", json={"name": "gws", "kind": "gateway"})
        assert r.status_code == 201, r.text
        assert r.json()["kind"] == "gateway"
        gateway_key = r.json()["key"]
    key = new_key(Prefix.USER)
    reply = await register_rest(replica, "gw1", "127.0.0.2", gateway_key, nats_key=key)
    want = gateway_permissions(reply.peer_id, inbox_prefix(key.public)).claims()
    claims = decode_claims(reply.nats_jwt)["nats"]
    assert {k: claims[k] for k in ("pub", "sub")} == want
    assert subjects.gateway_ticket(reply.peer_id) in want["pub"]["allow"]
    renewed = await register_rest(
        replica,
        "gw1",
        "127.0.0.2",
        peer_id=reply.peer_id,
        credential=reply.credential,
        nats_key=key,
    )
    claims = decode_claims(renewed.nats_jwt)["nats"]
    assert {k: claims[k] for k in ("pub", "sub")} == want  # a renewal keeps the kind
    plain = await register_rest(replica, "srv1", "127.0.0.3", SERVER_KEY)
    pub = decode_claims(plain.nats_jwt)["nats"]["pub"]["allow"]
    assert not any("gateway-ticket" in s for s in pub)


async def test_peer_creds_ttl_sets_the_lifetime(policy: PolicyFactory, seed_file: Path) -> None:
    replica = await start(policy, seed_file, peer_creds_ttl=600)
    before = time.time()
    reply = await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY)
    assert before + 599 <= reply.nats_expires_at <= time.time() + 600


def _broken_checksum() -> str:
    good = new_key(Prefix.USER).public
    return good[:-1] + ("B" if good[-1] == "A" else "A")


BAD_NATS_KEYS = {
    "empty": lambda: "",
    "garbage": lambda: "not-a-key",
    "account-key": lambda: new_key(Prefix.ACCOUNT).public,  # an account's, not a user's
    "bad-checksum": _broken_checksum,
    "seed": lambda: new_key(Prefix.USER).seed,  # a seed must never travel
}


@pytest.mark.parametrize("kind", sorted(BAD_NATS_KEYS))
async def test_a_bad_nats_key_is_refused_with_400(
    policy: PolicyFactory, seed_file: Path, kind: str
) -> None:
    nats_key = BAD_NATS_KEYS[kind]()
    replica = await start(policy, seed_file)
    with pytest.raises(BadRequest, match=r"nats_key: .* is not a NATS user public key"):
        await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY, nats_key=nats_key)
    assert replica.metric("meshssh_policy_registrations_rejected_total", reason="bad_nats_key") == 1
    async with replica.client() as api:
        assert (await api.get("/api/v1/peers")).json() == []
        key_state = (await api.get("/api/v1/setup-keys")).json()
    assert all(k["used"] == 0 for k in key_state)  # refused before the key was used


async def test_a_malformed_body_is_400_and_a_refused_key_403(
    policy: PolicyFactory, seed_file: Path
) -> None:
    replica = await start(policy, seed_file)
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        r = await http.post("/api/v1/peers/register", content=b"{not json")
        assert r.status_code == 400
        assert r.json()["code"] == "bad_message"
        huge = await http.post("/api/v1/peers/register", content=b"{" + b" " * 70_000)
        assert huge.status_code == 400
        assert huge.json()["error"] == "a registration is at most 64 KiB"
    with pytest.raises(Denied, match="setup key not recognised"):
        await register_rest(replica, "srv1", "127.0.0.2", "no-such-setup-key-0123")


async def test_renewal_returns_a_fresh_jwt_and_a_new_key_revokes_the_old_one(
    policy: PolicyFactory, nats_server: NatsServer, seed_file: Path, tmp_path: Path
) -> None:
    replica = await start(policy, seed_file)
    key = new_key(Prefix.USER)
    first = await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY, nats_key=key)
    await asyncio.sleep(1.1)  # iat has a resolution of one second
    again = await register_rest(
        replica,
        "srv1",
        "127.0.0.2",
        peer_id=first.peer_id,
        credential=first.credential,
        nats_key=key,
    )
    assert again.peer_id == first.peer_id
    assert again.nats_jwt != first.nats_jwt
    old, new = decode_claims(first.nats_jwt), decode_claims(again.nats_jwt)
    assert new["sub"] == key.public
    assert new["iat"] > old["iat"]
    assert again.nats_expires_at > first.nats_expires_at
    assert replica.metric("meshssh_policy_registrations_total", kind="returning") == 1

    live = await connect_peer(nats_server, tmp_path, key, again.nats_jwt)
    try:
        other = new_key(Prefix.USER)
        rekeyed = await register_rest(
            replica,
            "srv1",
            "127.0.0.2",
            peer_id=first.peer_id,
            credential=first.credential,
            nats_key=other,
        )
        await closed_by_revocation(live)
    finally:
        await live.close()
    fresh = await connect_peer(nats_server, tmp_path, other, rekeyed.nats_jwt)
    try:
        assert (await direct_get_map(fresh, first.peer_id)).peer.id == first.peer_id
    finally:
        await fresh.close()
    with pytest.raises(ConfigError, match="refused"):
        await connect_peer(nats_server, tmp_path, key, again.nats_jwt)
    async with replica.client() as api:
        listed = (await api.get("/api/v1/bus/revocations")).json()
    assert [r["public_key"] for r in listed] == [key.public]


async def test_a_removed_peer_loses_the_bus_within_5s_and_cannot_renew(
    policy: PolicyFactory, nats_server: NatsServer, seed_file: Path, tmp_path: Path
) -> None:
    replica = await start(policy, seed_file)
    key = new_key(Prefix.USER)
    reg = await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY, nats_key=key)
    nc = await connect_peer(nats_server, tmp_path, key, reg.nats_jwt)
    try:
        await direct_get_map(nc, reg.peer_id)
        async with replica.client() as api:
            assert (await api.delete(f"/api/v1/peers/{reg.peer_id}")).status_code == 204
        await closed_by_revocation(nc)
    finally:
        await nc.close()
    with pytest.raises(Denied, match="peer credential not accepted"):
        await register_rest(
            replica,
            "srv1",
            "127.0.0.2",
            peer_id=reg.peer_id,
            credential=reg.credential,
            nats_key=key,
        )
    with pytest.raises(ConfigError, match="refused"):
        await connect_peer(nats_server, tmp_path, key, reg.nats_jwt)
    assert replica.metric("meshssh_policy_bus_revocations_total") == 1
    assert replica.metric("meshssh_policy_bus_claims_push_failures_total") == 0


async def test_revocations_survive_a_policy_restart_and_a_server_that_lost_them(
    policy: PolicyFactory, nats_server: NatsServer, seed_file: Path, tmp_path: Path
) -> None:
    replica = await start(policy, seed_file)
    key = new_key(Prefix.USER)
    reg = await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY, nats_key=key)
    async with replica.client() as api:
        assert (await api.delete(f"/api/v1/peers/{reg.peer_id}")).status_code == 204
    await replica.stop()
    # A server whose account store is gone (a new node, a lost volume) has only the
    # preloaded account JWT of init, without the revocation: the removed peer gets in again.
    await nats_server.stop()
    shutil.rmtree(nats_server.store / "jwt")
    await nats_server.restart()
    back = await connect_peer(nats_server, tmp_path, key, reg.nats_jwt)
    try:
        # Policy pushes the stored revocations when it starts.
        again = await policy.start("r2", seed=seed_file)
        await closed_by_revocation(back, timeout=15)
    finally:
        await back.close()
    with pytest.raises(ConfigError, match="refused"):
        await connect_peer(nats_server, tmp_path, key, reg.nats_jwt)
    async with again.client() as api:
        listed = (await api.get("/api/v1/bus/revocations")).json()
    assert [r["public_key"] for r in listed] == [key.public]
    assert listed[0]["until"] > time.time() + 86000  # kept until its JWTs can have expired


async def test_the_admin_revocation_endpoint_needs_the_token_and_cuts_a_service_off(
    policy: PolicyFactory, nats_server: NatsServer, seed_file: Path
) -> None:
    replica = await start(policy, seed_file)
    old_authn = nats_server.creds("authn")
    service = await connect_as(nats_server, old_authn)
    from meshssh_common.nats_jwt import read_creds

    old_key = read_creds(old_authn).public_key
    try:
        async with replica.client(token=None) as anonymous:
            r = await anonymous.post("/api/v1/bus/revocations", json={"public_key": old_key})
            assert r.status_code == 401
        async with replica.client() as api:
            bad = await api.post("/api/v1/bus/revocations", json={"public_key": "Uxyz"})
            assert bad.status_code == 400
            assert "not a NATS user public key" in bad.json()["error"]
            assert service.is_connected
            r = await api.post("/api/v1/bus/revocations", json={"public_key": old_key})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["public_key"], body["revoked"], body["until"]) == (old_key, True, 0)
            await closed_by_revocation(service)
            again = (await api.post("/api/v1/bus/revocations", json={"public_key": old_key})).json()
            assert again["new"] is (again["at"] > body["at"])  # it moves on with the clock only
            listed = (await api.get("/api/v1/bus/revocations")).json()
            assert [r["public_key"] for r in listed] == [old_key]
    finally:
        await service.close()


async def test_two_replicas_revoke_at_once_and_lose_nothing(
    policy: PolicyFactory, nats_server: NatsServer, seed_file: Path, tmp_path: Path
) -> None:
    a = await start(policy, seed_file)
    b = await policy.start("r2", seed=seed_file)
    keys = [new_key(Prefix.USER) for _ in range(6)]
    regs: list[RegisterReply] = [
        await register_rest(a, f"lap{i}", f"127.0.4.{i + 1}", LAPTOP_KEY, nats_key=k)
        for i, k in enumerate(keys)
    ]
    conns = [
        await connect_peer(nats_server, tmp_path, k, r.nats_jwt)
        for k, r in zip(keys, regs, strict=True)
    ]
    try:
        async with a.client() as api_a, b.client() as api_b:
            results = await asyncio.gather(
                *(
                    (api_a if i % 2 else api_b).delete(f"/api/v1/peers/{r.peer_id}")
                    for i, r in enumerate(regs)
                )
            )
            assert [r.status_code for r in results] == [204] * len(regs), [r.text for r in results]
            await asyncio.gather(*(closed_by_revocation(nc) for nc in conns))
            listed = (await api_b.get("/api/v1/bus/revocations")).json()
        assert sorted(r["public_key"] for r in listed) == sorted(k.public for k in keys)
    finally:
        for nc in conns:
            await nc.close()


async def test_a_peer_record_deleted_behind_the_api_is_revoked_too(
    policy: PolicyFactory, nats_server: NatsServer, nc: NATS, seed_file: Path, tmp_path: Path
) -> None:
    replica = await start(policy, seed_file)
    key = new_key(Prefix.USER)
    reg = await register_rest(replica, "srv1", "127.0.0.2", SERVER_KEY, nats_key=key)
    peer_nc = await connect_peer(nats_server, tmp_path, key, reg.nats_jwt)
    try:
        peers = await nc.jetstream().key_value(subjects.BUCKET_PEERS)
        await peers.delete(f"peer.{reg.peer_id}")  # not through policy: its engine sees it
        await closed_by_revocation(peer_nc)
    finally:
        await peer_nc.close()
    async with replica.client() as api:
        listed = (await api.get("/api/v1/bus/revocations")).json()
    assert [r["public_key"] for r in listed] == [key.public]
