"""Admin audit: every REST write is an ``admin-change`` event; ``GET /api/v1/audit`` reads them.

The list of writes comes from the app's own OpenAPI document, so a new write route without a
case here fails the test. Ending a session lists it in the peer's map (sshd closes it).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.nats_jwt import Prefix, new_key
from meshssh_common.wire import Heartbeat, SessionInfo

from .conftest import TOKEN

SERVER_KEY = "meshssh-demo-server-key-0001"
ACTOR = "token:sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
SSH_RULE = {
    "sources": ["users"],
    "destinations": ["servers"],
    "protocol": "ssh",
    "authorized_groups": {"users": ["root"]},
}


# Public writes: no admin acts (a peer's setup key or credential authenticates it), so no
# admin-change event; registrations are counted and logged instead.
PUBLIC_WRITES = {("POST", "/api/v1/peers/register")}


async def _writes(api: Any) -> set[tuple[str, str]]:
    doc = (await api.get("/openapi.json")).json()
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    } - PUBLIC_WRITES


async def test_every_rest_write_is_audited_with_actor_action_and_ids(
    policy: Any, seed_file: Any, register: Any, nc: NATS, map_watch: Any, poll: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    peer = (await register("srv", "127.0.0.9", SERVER_KEY)).peer_id
    beat = Heartbeat(
        peer_id=peer,
        sent_at=time.time(),
        sessions=(SessionInfo(session_id="s1a2b3c4d5e6", local_user="root", jwt_user="alice"),),
    )
    await nc.publish(subjects.heartbeat(peer), codec.encode(beat))
    async with replica.client() as api:
        await poll(lambda: True)
        for _ in range(100):
            shown = (await api.get(f"/api/v1/peers/{peer}")).json()
            if shown["sessions"]:
                break
            await nc.publish(subjects.heartbeat(peer), codec.encode(beat))
            await nc.flush()
        cases: list[tuple[str, str, str, Any, tuple[str, ...]]] = [
            ("POST", "/api/v1/users", "/api/v1/users", {"id": "carol"}, ()),
            ("PATCH", "/api/v1/users/{user_id}", "/api/v1/users/carol", {"name": "C"}, ("carol",)),
            ("POST", "/api/v1/groups", "/api/v1/groups", {"id": "ops"}, ()),
            ("PATCH", "/api/v1/groups/{group_id}", "/api/v1/groups/ops", {"name": "Ops"}, ("ops",)),
            (
                "PUT",
                "/api/v1/groups/{group_id}/peers/{peer_id}",
                f"/api/v1/groups/ops/peers/{peer}",
                None,
                ("ops", peer),
            ),
            (
                "DELETE",
                "/api/v1/groups/{group_id}/peers/{peer_id}",
                f"/api/v1/groups/ops/peers/{peer}",
                None,
                ("ops", peer),
            ),
            (
                "PUT",
                "/api/v1/groups/{group_id}/users/{user_id}",
                "/api/v1/groups/ops/users/carol",
                None,
                ("ops", "carol"),
            ),
            (
                "DELETE",
                "/api/v1/groups/{group_id}/users/{user_id}",
                "/api/v1/groups/ops/users/carol",
                None,
                ("ops", "carol"),
            ),
            (
                "POST",
                "/api/v1/policies",
                "/api/v1/policies",
                {"id": "p1", "name": "p1", "rules": [SSH_RULE]},
                (),
            ),
            (
                "PUT",
                "/api/v1/policies/{policy_id}",
                "/api/v1/policies/p1",
                {"name": "p1b", "rules": [SSH_RULE]},
                ("p1",),
            ),
            (
                "PATCH",
                "/api/v1/policies/{policy_id}",
                "/api/v1/policies/p1",
                {"enabled": False},
                ("p1",),
            ),
            ("DELETE", "/api/v1/policies/{policy_id}", "/api/v1/policies/p1", None, ("p1",)),
            (
                "POST",
                "/api/v1/setup-keys",
                "/api/v1/setup-keys",
                {"name": "k2", "key": "a-secret-setup-key-value-123"},
                (),
            ),
            (
                "PATCH",
                "/api/v1/peers/{peer_id}",
                f"/api/v1/peers/{peer}",
                {"ssh_enabled": False},
                (peer,),
            ),
            (
                "DELETE",
                "/api/v1/peers/{peer_id}/sessions/{session_id}",
                f"/api/v1/peers/{peer}/sessions/s1a2b3c4d5e6",
                None,
                (peer, "s1a2b3c4d5e6"),
            ),
            (
                "POST",
                "/api/v1/bus/revocations",
                "/api/v1/bus/revocations",
                {"public_key": new_key(Prefix.USER).public},
                (),
            ),
            ("DELETE", "/api/v1/users/{user_id}", "/api/v1/users/carol", None, ("carol",)),
            ("DELETE", "/api/v1/groups/{group_id}", "/api/v1/groups/ops", None, ("ops",)),
        ]
        created_key = ""
        for method, _, path, body, _ in cases:
            r = await api.request(method, path, json=body)
            assert r.status_code < 300, (method, path, r.text)
            if path == "/api/v1/setup-keys":
                created_key = r.json()["id"]
        late = [
            (
                "PATCH",
                "/api/v1/setup-keys/{key_id}",
                f"/api/v1/setup-keys/{created_key}",
                {"revoked": True},
                (created_key,),
            ),
            (
                "DELETE",
                "/api/v1/setup-keys/{key_id}",
                f"/api/v1/setup-keys/{created_key}",
                None,
                (created_key,),
            ),
            ("DELETE", "/api/v1/peers/{peer_id}", f"/api/v1/peers/{peer}", None, (peer,)),
        ]
        for method, _, path, body, _ in late:
            r = await api.request(method, path, json=body)
            assert r.status_code < 300, (method, path, r.text)
        cases += late
        assert {(m, t) for m, t, *_ in cases} == await _writes(api)  # every write route

        refused = await api.patch("/api/v1/peers/nosuch", json={"ssh_enabled": True})
        assert refused.status_code == 404
        async with replica.client(token="wrong-token-0123456789") as stranger:
            assert (await stranger.post("/api/v1/groups", json={"id": "x"})).status_code == 401

        page = (
            await api.get("/api/v1/audit", params={"kind": "admin-change", "limit": 500})
        ).json()
    events = list(reversed(page["events"]))  # oldest first
    assert [(e["action"], tuple(e["targets"])) for e in events[: len(cases)]] == [
        (f"{m} {t}", ids) for m, t, _, _, ids in cases
    ]
    assert {e["actor"] for e in events} == {ACTOR}
    assert all(e["result"] in ("200", "201", "204") for e in events[: len(cases)])
    assert events[len(cases)]["result"] == "404"  # a refused write is recorded as refused
    assert len(events) == len(cases) + 1  # the unauthenticated one is not a write
    key_event = next(e for e in events if e["action"] == "POST /api/v1/setup-keys")
    assert "a-secret-setup-key-value-123" not in key_event["detail"]
    assert '"key":"<hidden>"' in key_event["detail"]
    switch = next(e for e in events if e["action"] == "PATCH /api/v1/peers/{peer_id}")
    assert switch["peer_id"] == peer
    assert switch["detail"] == '{"ssh_enabled":false}'
    # The ended session was listed in the peer's map before the peer was removed.
    assert any("s1a2b3c4d5e6" in m.peer.ended_sessions for m in map_watch.of(peer))


async def test_audit_pages_and_filters(policy: Any, seed_file: Any) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:
        for i in range(7):
            assert (await api.post("/api/v1/groups", json={"id": f"g{i}"})).status_code == 201
        first = (await api.get("/api/v1/audit", params={"limit": 3})).json()
        assert [e["targets"] for e in first["events"]] == [[], [], []]
        assert [e["detail"] for e in first["events"]] == [
            '{"id":"g6"}',
            '{"id":"g5"}',
            '{"id":"g4"}',
        ]
        second = (
            await api.get("/api/v1/audit", params={"limit": 3, "before": first["next_before"]})
        ).json()
        assert [e["detail"] for e in second["events"]] == [
            '{"id":"g3"}',
            '{"id":"g2"}',
            '{"id":"g1"}',
        ]
        assert (await api.get("/api/v1/audit", params={"kind": "session-start"})).json()[
            "events"
        ] == []
        assert (await api.get("/api/v1/audit", params={"user": "nobody"})).json()["events"] == []
        assert (await api.get("/api/v1/audit", params={"limit": 0})).status_code == 422
        async with replica.client(token=None) as anonymous:
            assert (await anonymous.get("/api/v1/audit")).status_code == 401
