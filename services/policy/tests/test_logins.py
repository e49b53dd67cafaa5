"""First logins (SPEC §6): accepted-login audit events add users to management, once.

Events are published to the real ``MESHSSH_AUDIT`` stream the way a peer's sshd does (and the
way a hostile peer could); policy replicas run in-process against a real nats-server.
"""

from __future__ import annotations

import time
from typing import Any

from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.wire import AuditEvent

SERVER_KEY = "meshssh-demo-server-key-0001"


def accepted(peer_id: str, user: str, **fields: Any) -> AuditEvent:
    base: dict[str, Any] = {"local_user": "deploy", "method": "password", "result": "accept"}
    return AuditEvent(
        kind="auth-accepted", peer_id=peer_id, at=time.time(), jwt_user=user, **{**base, **fields}
    )


async def publish(nc: NATS, event: AuditEvent, *, subject: str = "", data: bytes = b"") -> None:
    subject = subject or subjects.audit_event(event.kind, event.peer_id)
    await nc.jetstream().publish(subject, data or codec.encode(event), timeout=5)


async def users(replica: Any) -> dict[str, dict[str, Any]]:
    async with replica.client() as api:
        r = await api.get("/api/v1/users")
        assert r.status_code == 200, r.text
        return {u["id"]: u for u in r.json()}


def handled(replicas: list[Any], result: str) -> float:
    return sum(r.metric("meshssh_policy_login_events_total", result=result) for r in replicas)


async def test_a_first_login_adds_the_user_and_later_logins_only_move_last_login(
    policy: Any, register: Any, seed_file: Any, nc: NATS, poll: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = (await register("srv1", "127.0.0.2", SERVER_KEY)).peer_id
    before = time.time()
    await publish(nc, accepted(srv, "idp|erin", email="erin@example.com", name="Erin Example"))
    await poll(lambda: handled([replica], "added") == 1)
    erin = (await users(replica))["idp|erin"]
    assert (erin["email"], erin["name"], erin["groups"]) == ("erin@example.com", "Erin Example", [])
    assert before - 1 <= erin["first_seen"] == erin["last_login"] == erin["created_at"]

    async with replica.client() as api:  # the admin puts erin into a group
        assert (await api.put("/api/v1/groups/servers/users/idp%7Cerin")).status_code == 200
    await publish(nc, accepted(srv, "idp|erin", name="Erin E."))  # no email claim this time
    await poll(lambda: handled([replica], "updated") == 1)
    again = (await users(replica))["idp|erin"]
    assert again["first_seen"] == erin["first_seen"]
    assert again["last_login"] >= erin["last_login"]
    assert (again["email"], again["name"]) == ("erin@example.com", "Erin E.")
    assert again["groups"] == ["servers"]  # the record's groups are untouched

    await publish(nc, accepted(srv, "alice"))  # a seeded user: gets its first login times
    await poll(lambda: handled([replica], "updated") == 2)
    alice = (await users(replica))["alice"]
    assert (alice["email"], alice["groups"]) == ("alice@example.com", ["users"])
    assert alice["first_seen"] == alice["last_login"] > 0


async def test_bad_events_from_the_bus_are_counted_and_skipped_and_good_ones_still_apply(
    policy: Any, register: Any, seed_file: Any, nc: NATS, poll: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = (await register("srv1", "127.0.0.2", SERVER_KEY)).peer_id
    subject = subjects.audit_event("auth-accepted", srv)
    bad = [
        (accepted(srv, "x"), subject, b"not json"),
        (accepted(srv, "x"), subject, b'{"type": "sshd.audit.v1", "kind": 7}'),
        (AuditEvent(kind="session-start", peer_id=srv, at=1.0, jwt_user="x"), subject, b""),
        (accepted("someone-else", "x"), subject, b""),  # names another peer than its subject
        (accepted(srv, "u" * 256), subject, b""),
        (accepted(srv, "x", email="e" * 256), subject, b""),
        (accepted(srv, "x", name="evil\x1b[2Jname"), subject, b""),
        (accepted(srv, "x", name="y" * 17000), subject, b""),  # over the event size bound
    ]
    for event, subj, data in bad:
        await publish(nc, event, subject=subj, data=data)
    ignored = [accepted("not-a-peer", "x"), accepted(srv, "", method="none")]
    for event in ignored:
        await publish(nc, event)
    await publish(nc, accepted(srv, "frank"))
    await poll(lambda: handled([replica], "added") == 1)
    assert handled([replica], "bad") == len(bad)
    assert handled([replica], "ignored") == len(ignored)
    assert (
        replica.metric("meshssh_policy_bad_messages_total", endpoint="logins", reason="bad_token")
        == 1
    )
    assert (
        replica.metric("meshssh_policy_bad_messages_total", endpoint="logins", reason="undecodable")
        == 1
    )
    assert set(await users(replica)) == {"alice", "bob", "frank"}
    async with replica.client() as api:
        assert (await api.get("/api/v1/status")).status_code == 200  # still serving


async def test_two_replicas_apply_each_login_once_and_add_each_user_once(
    policy: Any, register: Any, seed_file: Any, nc: NATS, poll: Any
) -> None:
    replicas = [await policy.start("r1", seed=seed_file), await policy.start("r2")]
    srv = (await register("srv1", "127.0.0.2", SERVER_KEY)).peer_id
    names = [f"user-{i % 5}" for i in range(40)]
    for name in names:
        await publish(nc, accepted(srv, name))
    await poll(lambda: handled(replicas, "added") + handled(replicas, "updated") == len(names))
    assert handled(replicas, "added") == 5  # one record per user, however the work was shared
    assert handled(replicas, "retry") == 0
    listed = await users(replicas[1])
    assert {f"user-{i}" for i in range(5)} <= set(listed)
    assert all(listed[f"user-{i}"]["first_seen"] > 0 for i in range(5))


async def test_a_restarted_replica_resumes_where_the_durable_consumer_stopped(
    policy: Any, register: Any, seed_file: Any, nc: NATS, poll: Any
) -> None:
    first = await policy.start("r1", seed=seed_file)
    srv = (await register("srv1", "127.0.0.2", SERVER_KEY)).peer_id
    await publish(nc, accepted(srv, "gina"))
    await poll(lambda: handled([first], "added") == 1)
    assert await first.stop() == 0
    await publish(nc, accepted(srv, "hank"))  # while no replica runs
    second = await policy.start("r2")
    await poll(lambda: handled([second], "added") == 1)
    assert handled([second], "updated") == 0  # gina's event was not delivered again
    assert {"gina", "hank"} <= set(await users(second))


async def test_a_fetch_deadline_that_runs_out_between_pulls_does_not_stop_policy(
    policy: Any, register: Any, seed_file: Any, nc: NATS, poll: Any, monkeypatch: Any
) -> None:
    # nats-py's fetch() raises the builtin TimeoutError (not nats.errors.TimeoutError) when its
    # deadline runs out between its no-wait probe and its lingering pull, which happens under
    # load. Reaching that timing on purpose is not possible here, so the first two fetches
    # raise it the way nats-py does; every later one is the real fetch.
    from nats.js.client import JetStreamContext

    real_fetch = JetStreamContext.PullSubscription.fetch
    raised = 0

    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal raised
        if raised < 2:
            raised += 1
            raise TimeoutError
        return await real_fetch(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", fetch)
    replica = await policy.start(seed=seed_file)
    srv = (await register("srv1", "127.0.0.2", SERVER_KEY)).peer_id
    await poll(lambda: raised == 2)
    await publish(nc, accepted(srv, "idp|fay", email="fay@example.com"))
    await poll(lambda: handled([replica], "added") == 1)
    assert not replica.task.done()
    assert "idp|fay" in await users(replica)
