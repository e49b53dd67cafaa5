"""A REST change reaches exactly the affected peers' KV keys, once, with a higher serial."""

from __future__ import annotations

from typing import Any

from meshssh_common import subjects
from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.rpc import request
from meshssh_common.ssh_auth import authorize
from meshssh_common.wire import MetaReply, MetaUpdate, PeerFlags, PeerMeta
from meshssh_policy.state import dominates

SERVER_KEY = "meshssh-demo-server-key-0001"
LAPTOP_KEY = "meshssh-demo-laptop-key-0001"
TCP22 = {"sources": ["users"], "destinations": ["servers"], "protocol": "tcp", "ports": ["22"]}


async def caught_up(replicas: list[Any], revisions: dict[str, int], poll: Any) -> None:
    """Wait until every replica has published all maps for ``revisions`` (or newer)."""
    for replica in replicas:
        async with replica.client() as api:

            async def done(api: Any = api) -> bool:
                body = (await api.get("/api/v1/status")).json()
                return dominates(body["processed_revisions"], revisions)

            for _ in range(500):
                if await done():
                    break
                await poll(lambda: True, timeout=0.02)
            else:
                raise TimeoutError(f"{replica.instance} did not catch up")


async def demo_mesh(policy: Any, register: Any, seed_file: Any, replicas: int = 1) -> Any:
    started = [await policy.start(f"r{i}", seed=seed_file) for i in range(1, replicas + 1)]
    srv = await register("srv1", "127.0.0.2", SERVER_KEY)
    lap = await register("lap1", "127.0.0.3", LAPTOP_KEY)
    async with started[0].client() as api:
        assert (await api.post("/api/v1/groups", json={"id": "others"})).status_code == 201
        r = await api.post("/api/v1/setup-keys", json={"name": "others", "auto_groups": ["others"]})
        key = r.json()["key"]
    other = await register("other1", "127.0.0.4", key)
    return started, srv.peer_id, lap.peer_id, other.peer_id


KINDS = ("delta", "snapshot")


async def test_a_policy_change_publishes_one_new_map_to_each_affected_peer_only(
    policy: Any, register: Any, seed_file: Any, map_watch: Any, poll: Any
) -> None:
    (replica,), srv, lap, other = await demo_mesh(policy, register, seed_file)
    await map_watch.wait(lambda: map_watch.latest(srv) and map_watch.latest(srv).firewall_rules)
    before = map_watch.latest(srv)
    assert check_inbound(before, "127.0.0.3", 22) is AclDecision.ACCEPT
    assert check_inbound(before, "127.0.0.3", 8080) is AclDecision.NO_RULE
    mark = len(map_watch.events)

    async with replica.client() as api:
        rule = {**TCP22, "ports": ["22", "8080"]}
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"rules": [rule]})
        assert r.status_code == 200, r.text

    await map_watch.wait(lambda: map_watch.latest(srv).serial > before.serial)
    after = map_watch.latest(srv)
    await caught_up([replica], after.state_revisions, poll)
    assert map_watch.keys_after(mark) == [subjects.netmap_key(srv)]
    assert after.serial == before.serial + 1
    assert check_inbound(after, "127.0.0.3", 8080) is AclDecision.ACCEPT
    assert map_watch.latest(lap) is not None
    assert map_watch.latest(other) is not None
    published = replica.metric("meshssh_policy_maps_total", result="published")
    assert published == len(map_watch.events) - 1  # every write we saw, and no other
    assert replica.metric("meshssh_policy_map_bytes_count") == published
    writes = [replica.metric("meshssh_policy_map_writes_total", kind=k) or 0 for k in KINDS]
    assert sum(writes) == published  # each a delta, or a new snapshot and the delta naming it
    assert replica.metric("meshssh_policy_publish_seconds_count") == published
    assert replica.metric("meshssh_policy_maps_computed_total") > published
    assert replica.metric("meshssh_policy_compute_seconds_count") > 0


async def test_revoking_access_reaches_the_server_and_the_client(
    policy: Any, register: Any, seed_file: Any, map_watch: Any, poll: Any
) -> None:
    (replica,), srv, lap, other = await demo_mesh(policy, register, seed_file)
    await map_watch.wait(lambda: map_watch.latest(srv).firewall_rules != ())
    assert authorize(map_watch.latest(srv).ssh_auth, "alice", "deploy")
    # A legacy TCP/22 rule: every validated user, known to management or not.
    assert authorize(map_watch.latest(srv).ssh_auth, "never-seen", "deploy")
    assert [p.id for p in map_watch.latest(lap).remote_peers] == [srv]
    mark = len(map_watch.events)

    async with replica.client() as api:
        r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"enabled": False})
        assert r.status_code == 200
    await map_watch.wait(lambda: map_watch.latest(srv).firewall_rules == ())
    await map_watch.wait(lambda: map_watch.latest(lap).remote_peers == ())
    assert check_inbound(map_watch.latest(srv), "127.0.0.3", 22) is AclDecision.NO_RULE
    assert map_watch.latest(srv).ssh_auth.authorized_users == ()
    assert not authorize(map_watch.latest(srv).ssh_auth, "never-seen", "deploy")
    assert subjects.netmap_key(other) not in map_watch.keys_after(mark)


async def test_two_replicas_publish_one_map_per_change_with_strictly_rising_serials(
    policy: Any, register: Any, seed_file: Any, map_watch: Any, poll: Any
) -> None:
    replicas, srv, _, _ = await demo_mesh(policy, register, seed_file, replicas=2)
    await map_watch.wait(lambda: map_watch.latest(srv).firewall_rules != ())
    await caught_up(replicas, map_watch.latest(srv).state_revisions, poll)
    mark = len(map_watch.events)
    for i, replica in enumerate([*replicas, *replicas]):
        async with replica.client() as api:
            rule = {**TCP22, "ports": ["22", str(9000 + i)]}
            r = await api.patch("/api/v1/policies/users-to-servers-ssh", json={"rules": [rule]})
            assert r.status_code == 200
        await map_watch.wait(
            lambda i=i: (
                check_inbound(map_watch.latest(srv), "127.0.0.3", 9000 + i) is AclDecision.ACCEPT
            )
        )
        await caught_up(replicas, map_watch.latest(srv).state_revisions, poll)
    assert map_watch.keys_after(mark) == [subjects.netmap_key(srv)] * 4
    serials = [m.serial for m in map_watch.of(srv)]
    assert serials == sorted(set(serials))
    assert serials[-4:] == list(range(serials[-4], serials[-4] + 4))


async def test_a_registration_and_an_ssh_switch_reach_exactly_the_peers_involved(
    policy: Any, register: Any, seed_file: Any, map_watch: Any, poll: Any
) -> None:
    (replica,), srv, lap, _ = await demo_mesh(policy, register, seed_file)
    await map_watch.wait(lambda: map_watch.latest(srv).firewall_rules != ())
    mark = len(map_watch.events)
    lap2 = (await register("lap2", "127.0.0.5", LAPTOP_KEY)).peer_id
    await map_watch.wait(
        lambda: any("127.0.0.5/32" in r.sources for r in map_watch.latest(srv).firewall_rules)
    )
    await caught_up([replica], map_watch.latest(srv).state_revisions, poll)
    assert sorted(map_watch.keys_after(mark)) == sorted(
        [subjects.netmap_key(srv), subjects.netmap_key(lap2)]
    )
    assert len(map_watch.of(lap2)) == 1  # its first map already has its groups' rules

    mark = len(map_watch.events)
    async with replica.client() as api:
        r = await api.patch(f"/api/v1/peers/{srv}", json={"ssh_enabled": False})
        assert r.status_code == 200
        assert r.json()["ssh_enabled"] is False
    await map_watch.wait(lambda: not map_watch.latest(srv).peer.ssh_enabled)
    await caught_up([replica], map_watch.latest(srv).state_revisions, poll)
    # the server loses its 22022 rule and its table; both laptops see it has no SSH any more
    assert sorted(set(map_watch.keys_after(mark))) == sorted(
        subjects.netmap_key(p) for p in (srv, lap, lap2)
    )
    assert not any(r.port == "22022" for r in map_watch.latest(srv).firewall_rules)
    assert map_watch.latest(lap).remote_peers[0].ssh_enabled is False


async def test_ssh_rule_authorizations_follow_group_and_user_changes(
    policy: Any, register: Any, seed_file: Any, map_watch: Any, poll: Any
) -> None:
    (replica,), srv, lap, other = await demo_mesh(policy, register, seed_file)
    async with replica.client() as api:
        assert (await api.post("/api/v1/groups", json={"id": "admins"})).status_code == 201
        ssh = {
            "sources": ["users"],
            "destinations": ["servers"],
            "protocol": "ssh",
            "authorized_groups": {"admins": ["root"], "users": ["deploy"]},
        }
        r = await api.put(
            "/api/v1/policies/users-to-servers-ssh", json={"name": "ssh", "rules": [ssh]}
        )
        assert r.status_code == 200, r.text
    await map_watch.wait(lambda: "deploy" in map_watch.latest(srv).ssh_auth.machine_users)
    table = map_watch.latest(srv).ssh_auth
    assert authorize(table, "alice", "deploy")
    assert not authorize(table, "alice", "root")

    steps = [
        (
            "POST",
            "/api/v1/users",
            {"id": "carol", "groups": ["admins"]},
            lambda t: authorize(t, "carol", "root") and not authorize(t, "carol", "deploy"),
        ),
        (
            "PUT",
            "/api/v1/groups/admins/users/alice",
            None,
            lambda t: authorize(t, "alice", "root") and authorize(t, "alice", "deploy"),
        ),
        (
            "DELETE",
            "/api/v1/groups/users/users/alice",
            None,
            lambda t: authorize(t, "alice", "root") and not authorize(t, "alice", "deploy"),
        ),
        ("DELETE", "/api/v1/users/carol", None, lambda t: not authorize(t, "carol", "root")),
    ]
    async with replica.client() as api:
        for method, path, body, check in steps:
            mark = len(map_watch.events)
            serial = map_watch.latest(srv).serial
            r = await api.request(method, path, json=body)
            assert r.status_code < 300, r.text
            await map_watch.wait(lambda serial=serial: map_watch.latest(srv).serial > serial)
            assert check(map_watch.latest(srv).ssh_auth), path
            await caught_up([replica], map_watch.latest(srv).state_revisions, poll)
            assert map_watch.keys_after(mark) == [subjects.netmap_key(srv)], path
    assert map_watch.latest(lap).peer.ssh_enabled is False
    assert map_watch.latest(other).ssh_auth.authorized_users == ()


async def test_a_renamed_client_peer_is_renamed_in_the_servers_source_peers(
    policy: Any, register: Any, seed_file: Any, map_watch: Any, poll: Any
) -> None:
    (replica,), srv, lap, _ = await demo_mesh(policy, register, seed_file)
    await map_watch.wait(lambda: [p.name for p in map_watch.latest(srv).source_peers] == ["lap1"])
    assert [p.id for p in map_watch.latest(srv).source_peers] == [lap]  # `other` may not connect
    async with replica.client() as api:
        r = await api.patch(f"/api/v1/peers/{lap}", json={"name": "laptop-renamed"})
        assert r.status_code == 200, r.text
    await map_watch.wait(
        lambda: [p.name for p in map_watch.latest(srv).source_peers] == ["laptop-renamed"]
    )


async def test_remote_peers_carry_the_ports_each_peer_reports_and_only_changes_republish(
    policy: Any, register: Any, seed_file: Any, nc: Any, map_watch: Any, poll: Any
) -> None:
    await policy.start(seed=seed_file)
    srv = await register("srv1", "127.0.0.2", SERVER_KEY, ssh_port=22022, relay_port=2222)
    lap = await register("lap1", "127.0.0.3", LAPTOP_KEY)
    await map_watch.wait(lambda: bool(map_watch.latest(lap.peer_id).remote_peers))
    (remote,) = map_watch.latest(lap.peer_id).remote_peers
    assert (remote.id, remote.ssh_port, remote.relay_port) == (srv.peer_id, 22022, 2222)

    async def report(ssh_port: int, relay_port: int) -> None:
        meta = PeerMeta(
            version="0.1.0",
            capabilities=("native_ssh",),
            flags=PeerFlags(server_ssh_allowed=True),
            ssh_port=ssh_port,
            relay_port=relay_port,
        )
        update = MetaUpdate(peer_id=srv.peer_id, credential=srv.credential, meta=meta)
        await request(nc, subjects.POLICY_META, update, MetaReply, timeout=10)

    before = map_watch.latest(lap.peer_id).serial
    await report(22022, 2222)  # the same ports: nothing for the laptop changes
    # (the reply comes once this replica has processed the write and published its maps)
    assert map_watch.latest(lap.peer_id).serial == before
    await report(40022, 2222)
    await map_watch.wait(lambda: map_watch.latest(lap.peer_id).serial > before)
    (remote,) = map_watch.latest(lap.peer_id).remote_peers
    assert (remote.ssh_port, remote.relay_port) == (40022, 2222)
