"""Durable state on a real nats-server: many writers lose nothing, restarts lose nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_testkit import NatsServer
from meshssh_testkit.netmaps import stored_map

SERVER_KEY = "meshssh-demo-server-key-0001"
LAPTOP_KEY = "meshssh-demo-laptop-key-0001"


async def test_concurrent_writers_on_two_replicas_never_lose_a_member(
    policy: Any, register: Any, seed_file: Any
) -> None:
    a = await policy.start("r1", seed=seed_file)
    b = await policy.start("r2", seed=seed_file)  # the same seed twice: created once
    async with a.client() as api_a, b.client() as api_b:
        assert (await api_a.post("/api/v1/groups", json={"id": "crowd"})).status_code == 201
        users = [f"user{i}" for i in range(12)]
        for i, user in enumerate(users):
            api = api_a if i % 2 else api_b
            assert (await api.post("/api/v1/users", json={"id": user})).status_code == 201
        results = await asyncio.gather(
            *(
                (api_a if i % 2 else api_b).put(f"/api/v1/groups/crowd/users/{u}")
                for i, u in enumerate(users)
            )
        )
        assert all(r.status_code == 200 for r in results)
        # peers registering at the same time all land in the key's auto-group too
        regs = await asyncio.gather(
            *(register(f"lap{i}", f"127.0.3.{i + 1}", LAPTOP_KEY) for i in range(6))
        )
        for api in (api_a, api_b):
            crowd = (await api.get("/api/v1/groups/crowd")).json()
            assert sorted(crowd["users"]) == sorted(users)
        want = {r.peer_id for r in regs}

        async def members(api: Any) -> set[str]:
            return set((await api.get("/api/v1/groups/users")).json()["peers"])

        for api in (api_a, api_b):
            for _ in range(200):
                if await members(api) == want:
                    break
                await asyncio.sleep(0.02)
            assert await members(api) == want
        assert len((await api_a.get("/api/v1/policies")).json()) == 1
        assert len((await api_b.get("/api/v1/setup-keys")).json()) == 2


async def test_state_maps_and_credentials_survive_policy_and_nats_restarts(
    policy: Any, register: Any, seed_file: Any, nats_server: NatsServer, nc: NATS
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = await register("srv1", "127.0.0.2", SERVER_KEY)
    await register("lap1", "127.0.0.3", LAPTOP_KEY)
    async with replica.client() as api:
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": False})
        assert r.status_code == 200
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": True})
        assert r.status_code == 200
        await api.post("/api/v1/groups", json={"id": "extra", "users": ["alice"]})
        before = {
            path: (await api.get(path)).json()
            for path in (
                "/api/v1/groups",
                "/api/v1/policies",
                "/api/v1/users",
                "/api/v1/setup-keys",
            )
        }
        peers_before = (await api.get("/api/v1/peers")).json()
        map_before = (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json()
    maps = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    key = subjects.netmap_key(srv.peer_id)
    revision = (await maps.get(key)).revision
    assert await replica.stop() == 0

    await nats_server.restart()
    async with asyncio.timeout(10):
        while not nc.is_connected:
            await asyncio.sleep(0.05)
    replica = await policy.start("r1-again", seed=seed_file)
    async with replica.client() as api:
        for path, body in before.items():
            assert (await api.get(path)).json() == body, path
        peers_after = (await api.get("/api/v1/peers")).json()
        assert [(p["id"], p["mesh_ip"], p["groups"]) for p in peers_after] == [
            (p["id"], p["mesh_ip"], p["groups"]) for p in peers_before
        ]
        assert (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json() == map_before
    maps = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    assert (await maps.get(key)).revision == revision  # unchanged maps are not rewritten

    again = await register("srv1", "127.0.0.2", peer_id=srv.peer_id, credential=srv.credential)
    assert again.peer_id == srv.peer_id
    async with replica.client() as api:
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": False})
        assert r.status_code == 200
        for _ in range(200):
            current = (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json()
            if current["serial"] > map_before["serial"]:
                break
            await asyncio.sleep(0.02)
    assert current["serial"] == map_before["serial"] + 1
    assert current.get("firewall_rules", []) == []


async def test_a_running_replica_keeps_working_across_a_nats_restart(
    policy: Any, register: Any, seed_file: Any, nats_server: NatsServer, nc: NATS
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = await register("srv1", "127.0.0.2", SERVER_KEY)
    await register("lap1", "127.0.0.3", LAPTOP_KEY)
    async with replica.client() as api:
        serial = (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json()["serial"]
    await nats_server.restart()
    async with replica.client() as api:
        for _ in range(300):  # the replica reconnects on its own; writes work again
            r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": False})
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text
        for _ in range(300):
            current = (await api.get(f"/api/v1/peers/{srv.peer_id}/netmap")).json()
            if current["serial"] > serial:
                break
            await asyncio.sleep(0.05)
    assert current["serial"] == serial + 1
    assert current.get("firewall_rules", []) == []
    lap2 = await register("lap2", "127.0.0.4", LAPTOP_KEY)
    assert lap2.netmap.peer.name == "lap2"


async def test_a_peer_removed_while_no_replica_ran_gets_the_empty_map_at_start(
    policy: Any, register: Any, seed_file: Any, nc: NATS
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = await register("srv1", "127.0.0.2", SERVER_KEY)
    await register("lap1", "127.0.0.3", LAPTOP_KEY)
    before = await stored_map(nc, srv.peer_id)
    assert before is not None
    assert before.firewall_rules
    assert await replica.stop() == 0
    peers = await open_bucket(nc.jetstream(), subjects.BUCKET_PEERS)
    await peers.delete(f"peer.{srv.peer_id}")
    await policy.start("r1-again")
    for _ in range(200):
        after = await stored_map(nc, srv.peer_id)
        assert after is not None
        if after.serial > before.serial:
            break
        await asyncio.sleep(0.02)
    assert after.serial == before.serial + 1
    assert (after.firewall_rules, after.remote_peers, after.peer.ssh_enabled) == ((), (), False)
    assert after.ssh_auth.authorized_users == ()


async def test_the_seed_creates_only_what_is_missing_and_keeps_admin_changes(
    policy: Any, seed_file: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": False})
        assert r.status_code == 200
        assert (await api.delete("/api/v1/groups/users/users/alice")).status_code == 200
        assert (await api.delete("/api/v1/users/bob")).status_code == 204
    assert replica.metric("meshssh_policy_maps_total", result="error") == 0
    await replica.stop()
    replica = await policy.start("r1-again", seed=seed_file)
    async with replica.client() as api:
        policies = (await api.get("/api/v1/policies")).json()
        assert [(p["id"], p["enabled"]) for p in policies] == [("users-to-servers-ssh", False)]
        users = {u["id"]: u["groups"] for u in (await api.get("/api/v1/users")).json()}
        assert users == {"alice": [], "bob": ["users"]}  # bob was missing: created again
        assert len((await api.get("/api/v1/setup-keys")).json()) == 2
