"""Peer registration and metadata updates over NATS, against a real policy and nats-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.codec import encode
from meshssh_common.errors import Denied
from meshssh_common.rpc import request
from meshssh_common.wire import Heartbeat, MetaReply, MetaUpdate, PeerFlags, PeerMeta

SERVER_KEY = "meshssh-demo-server-key-0001"
LAPTOP_KEY = "meshssh-demo-laptop-key-0001"


async def new_key(replica: Any, **body: Any) -> str:
    async with replica.client() as api:
        r = await api.post("/api/v1/setup-keys", json={"name": "k", **body})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


async def test_a_new_peer_gets_an_id_a_credential_and_its_map(
    policy: Any, register: Any, seed_file: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    reply = await register("srv1", "127.0.0.2", SERVER_KEY)
    assert reply.netmap.peer.id == reply.peer_id
    assert reply.netmap.peer.mesh_ip == "127.0.0.2"
    assert reply.netmap.peer.mesh_prefix == "127.0.0.0/8"
    assert reply.netmap.peer.ssh_enabled is True  # the server key switches SSH on
    assert len(reply.credential) >= 32
    async with replica.client() as api:
        peer = (await api.get(f"/api/v1/peers/{reply.peer_id}")).json()
        key = [
            k for k in (await api.get("/api/v1/setup-keys")).json() if k["name"] == "demo servers"
        ]
    assert peer["groups"] == ["servers"]
    assert peer["ssh_host_key"].startswith("ssh-ed25519 AAAA")
    assert "credential_hash" not in peer
    assert key[0]["used"] == 1
    assert replica.metric("meshssh_policy_registrations_total", kind="new") == 1


@pytest.mark.parametrize(
    ("key_body", "message", "reason"),
    [
        (None, "setup key not recognised", "bad_key"),
        ({"expires_in": 1}, "setup key expired", "expired_key"),
        ({"type": "one-off"}, "setup key usage limit reached", "exhausted_key"),
        ({"revoke": True}, "setup key revoked", "revoked_key"),
    ],
)
async def test_a_bad_setup_key_is_refused_with_its_reason(
    policy: Any, register: Any, key_body: Any, message: str, reason: str
) -> None:
    replica = await policy.start()
    key = "no-such-key-0123456789"
    if key_body is not None:
        revoke = key_body.pop("revoke", False)
        key = await new_key(replica, **key_body)
        if key_body.get("type") == "one-off":
            await register("first", "127.0.0.9", key)
        if revoke:
            async with replica.client() as api:
                keys = (await api.get("/api/v1/setup-keys")).json()
                await api.patch(f"/api/v1/setup-keys/{keys[0]['id']}", json={"revoked": True})
        if key_body.get("expires_in"):
            await asyncio.sleep(1.1)
    with pytest.raises(Denied, match=message):
        await register("srv1", "127.0.0.2", key)
    assert replica.metric("meshssh_policy_registrations_rejected_total", reason=reason) == 1
    async with replica.client() as api:
        assert all(p["mesh_ip"] != "127.0.0.2" for p in (await api.get("/api/v1/peers")).json())
    # the refused peer's address was not kept: a good key can use it
    await register("srv1", "127.0.0.2", await new_key(replica))


async def test_addresses_outside_the_prefix_taken_or_malformed_are_refused(
    policy: Any, register: Any, seed_file: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    await register("srv1", "127.0.0.2", SERVER_KEY)
    with pytest.raises(Denied, match=r"outside the mesh prefix 127\.0\.0\.0/8"):
        await register("srv2", "10.1.2.3", SERVER_KEY)
    with pytest.raises(Denied, match=r"127\.0\.0\.2 is already used by another peer"):
        await register("srv2", "127.0.0.2", SERVER_KEY)
    with pytest.raises(Denied, match="not an IP address"):
        await register("srv2", "127.0.0.x", SERVER_KEY)
    with pytest.raises(Denied, match="network or broadcast"):
        await register("srv2", "127.0.0.0", SERVER_KEY)
    with pytest.raises(Denied, match="not an OpenSSH public key"):
        await register("srv2", "127.0.0.7", SERVER_KEY, host_key="ssh-ed25519 bm90IGEga2V5")
    for reason, count in [
        ("outside_prefix", 1),
        ("address_taken", 1),
        ("bad_address", 2),
        ("bad_host_key", 1),
    ]:
        assert replica.metric("meshssh_policy_registrations_rejected_total", reason=reason) == count
    async with replica.client() as api:
        keys = {k["name"]: k["used"] for k in (await api.get("/api/v1/setup-keys")).json()}
    assert keys["demo servers"] == 1  # refusals did not use the key


async def test_a_peer_logs_in_again_with_its_credential_and_a_wrong_one_is_refused(
    policy: Any, register: Any, seed_file: Any
) -> None:
    await policy.start(seed=seed_file)
    first = await register("srv1", "127.0.0.2", SERVER_KEY)
    again = await register("srv1", "127.0.0.2", peer_id=first.peer_id, credential=first.credential)
    assert again.peer_id == first.peer_id
    assert again.credential == first.credential
    moved = await register("srv1", "127.0.0.22", peer_id=first.peer_id, credential=first.credential)
    assert moved.netmap.peer.mesh_ip == "127.0.0.22"
    await register("srv9", "127.0.0.2", SERVER_KEY)  # the old address was released
    with pytest.raises(Denied, match="peer credential not accepted"):
        await register("srv1", "127.0.0.22", peer_id=first.peer_id, credential="wrong")
    with pytest.raises(Denied, match="peer credential not accepted"):
        await register("srv1", "127.0.0.22", peer_id="nosuchpeer", credential=first.credential)


async def test_a_name_in_use_gets_a_numbered_suffix(
    policy: Any, register: Any, seed_file: Any
) -> None:
    await policy.start(seed=seed_file)
    await register("web", "127.0.0.2", SERVER_KEY)
    second = await register("web", "127.0.0.3", SERVER_KEY)
    assert second.netmap.peer.name == "web-2"


async def test_a_key_with_a_usage_limit_admits_exactly_that_many_concurrent_peers(
    policy: Any, register: Any
) -> None:
    replica = await policy.start()
    key = await new_key(replica, usage_limit=3)
    results = await asyncio.gather(
        *(register(f"p{i}", f"127.0.1.{i + 1}", key) for i in range(8)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3
    assert all("usage limit reached" in str(r) for r in results if isinstance(r, BaseException))


async def test_concurrent_peers_asking_for_one_address_get_it_once(
    policy: Any, register: Any
) -> None:
    replica = await policy.start()
    key = await new_key(replica)
    results = await asyncio.gather(
        *(register(f"p{i}", "127.0.2.1", key) for i in range(6)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1


async def test_a_meta_update_changes_the_map_and_heartbeats_make_a_peer_online(
    policy: Any, register: Any, seed_file: Any, nc: NATS, poll: Any
) -> None:
    replica = await policy.start(seed=seed_file, peer_offline_timeout=1.0)
    srv = await register("srv1", "127.0.0.2", SERVER_KEY, server=False)
    lap = await register("lap1", "127.0.0.3", LAPTOP_KEY)
    async with replica.client() as api:
        m = (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json()
    assert [r.get("port") for r in m["firewall_rules"]] == ["22"]  # no 22022: not allowed

    meta = PeerMeta(
        version="0.1.0", capabilities=("native_ssh",), flags=PeerFlags(server_ssh_allowed=True)
    )
    update = MetaUpdate(peer_id=srv.peer_id, credential=srv.credential, meta=meta)
    ack = await request(nc, subjects.POLICY_META, update, MetaReply, timeout=10)
    async with replica.client() as api:
        m = (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json()
    assert m["serial"] == ack.serial
    assert [r.get("port") for r in m["firewall_rules"]] == ["22", "22022"]
    bad = MetaUpdate(peer_id=srv.peer_id, credential="nope", meta=meta)
    with pytest.raises(Denied):
        await request(nc, subjects.POLICY_META, bad, MetaReply, timeout=10)

    hb = Heartbeat(peer_id=srv.peer_id, sent_at=time.time(), ssh_running=True, relay_mode="proxy")
    await nc.publish(subjects.heartbeat(srv.peer_id), encode(hb))
    await nc.publish(subjects.heartbeat(lap.peer_id), encode(hb))  # subject/peer mismatch
    async with replica.client() as api:

        async def online() -> dict[str, bool]:
            peers = (await api.get("/api/v1/peers")).json()
            return {p["id"]: p["online"] for p in peers}

        states: dict[str, bool] = {}

        async def check(want: bool) -> None:
            for _ in range(300):
                states.update(await online())
                if states[srv.peer_id] is want:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"srv online never became {want}")

        await check(True)
        assert states[lap.peer_id] is False
        peer = (await api.get(f"/api/v1/peers/{srv.peer_id}")).json()
        assert (peer["relay_mode"], peer["ssh_running"]) == ("proxy", True)
        await check(False)  # no heartbeat for longer than the 1 s timeout
    assert (
        replica.metric(
            "meshssh_policy_bad_messages_total", endpoint="heartbeat", reason="bad_token"
        )
        == 1
    )
