"""meshctl as a real subprocess against a real meshssh-policy process and nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.connection import connect_nats
from meshssh_common.nats_jwt import Prefix, new_key, read_creds
from meshssh_common.recording_format import (
    EVENTS_MAGIC,
    CastWriter,
    append_event,
    pack_chunk,
    unpack_chunk,
)
from meshssh_common.wire import (
    Heartbeat,
    PeerFlags,
    PeerMeta,
    RegisterReply,
    RegisterRequest,
    SessionInfo,
)
from meshssh_testkit import script
from meshssh_testkit.asciicast import parse_asciicast
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import run_command

TOKEN = "meshctl-test-token-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Meshctl:
    def __init__(self, api: str) -> None:
        self.api = api

    async def __call__(self, *args: str, token: str | None = TOKEN, api: str | None = None) -> Ran:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSSH_")}
        env["MESHSSH_API_URL"] = api or self.api
        if token is not None:
            env["MESHSSH_ADMIN_TOKEN"] = token
        result = await run_command(script("meshctl"), *args, env=env, replace_env=True, timeout=30)
        return Ran(result.returncode, result.out, result.err)


@pytest.fixture
async def meshctl(nats_server: NatsServer, services: ServiceFactory) -> Meshctl:
    """meshctl against a real policy, which holds the server's bus keys (it mints and revokes)."""
    assert nats_server.keys is not None
    proc = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--listen",
        "127.0.0.1:0",
        "--mesh-prefix",
        "127.0.0.0/8",
        "--bus-keys",
        str(nats_server.keys.dir),
        env={"MESHSSH_ADMIN_TOKEN": TOKEN},
    )
    match = re.search(r"api listening.*url=(http://\S+)", proc.output())
    assert match, proc.output()
    return Meshctl(match[1])


async def register(api: str, name: str, ip: str, key: str) -> str:
    """Register a peer over REST, as its agent does."""
    meta = PeerMeta(
        version="0.1.0", capabilities=("native_ssh",), flags=PeerFlags(server_ssh_allowed=True)
    )
    req = RegisterRequest(
        name=name,
        mesh_ip=ip,
        meta=meta,
        setup_key=key,
        ssh_host_key=HOST_KEY,
        nats_key=new_key(Prefix.USER).public,
    )
    async with httpx.AsyncClient(base_url=api, timeout=15) as http:
        r = await http.post("/api/v1/peers/register", content=codec.encode(req))
    assert r.status_code == 200, r.text
    return codec.decode(r.content, RegisterReply).peer_id


async def ok(run: Any, *args: str) -> Ran:
    ran = await run(*args)
    assert ran.code == 0, (args, ran.err)
    assert ran.err == ""
    return ran


async def test_an_operator_builds_a_mesh_with_meshctl(meshctl: Meshctl, nc: NATS) -> None:
    await ok(meshctl, "groups", "create", "servers", "--name", "Servers")
    await ok(meshctl, "groups", "create", "laptops")
    await ok(meshctl, "users", "add", "alice", "--email", "alice@example.com", "--group", "laptops")
    key = (
        await ok(
            meshctl,
            "--json",
            "setup-keys",
            "create",
            "srv",
            "--auto-group",
            "servers",
            "--expires-in",
            "1d",
        )
    ).json()
    assert key["key"]
    human = await ok(
        meshctl, "setup-keys", "create", "laptops", "--one-off", "--auto-group", "laptops"
    )
    laptop_key = re.search(r"key \(shown only now\): (\S+)", human.out)
    assert laptop_key
    srv = await register(meshctl.api, "web1", "127.0.0.2", key["key"])
    await register(meshctl.api, "lap1", "127.0.0.3", laptop_key[1])
    gateway_key = (await ok(meshctl, "--json", "setup-keys", "create", "gws", "--gateway")).json()
    assert gateway_key["kind"] == "gateway"
    gw1 = await register(meshctl.api, "gw1", "127.0.0.4", gateway_key["key"])
    assert (await ok(meshctl, "--json", "peers", "show", gw1)).json()["kind"] == "gateway"
    assert (await ok(meshctl, "--json", "peers", "show", srv)).json()["kind"] == "peer"
    listed = (await ok(meshctl, "setup-keys", "ls")).out
    row = [ln.split()[:3] for ln in listed.splitlines() if ln.startswith(gateway_key["id"])]
    assert row == [[gateway_key["id"], "gws", "reusable,gateway"]]
    await ok(meshctl, "peers", "rm", gw1)

    table = (await ok(meshctl, "peers", "ls")).out.splitlines()
    assert table[0].split()[:4] == ["NAME", "ID", "MESH", "IP"]
    assert any(line.split()[:3] == ["web1", srv, "127.0.0.2"] for line in table)
    assert "offline" in table[1]
    peers = (await ok(meshctl, "peers", "ls", "--json")).json()
    assert {p["name"] for p in peers} == {"web1", "lap1"}

    shown = (await ok(meshctl, "peers", "show", "web1")).out
    assert f"id:            {srv}" in shown
    assert "ssh switch:    off" in shown
    assert re.search(r"^nats key:      U[A-Z0-9]{55}$", shown, re.M)
    enabled = (await ok(meshctl, "--json", "peers", "ssh", "enable", "web1")).json()
    assert (enabled["ssh_enabled"], enabled["ssh_active"]) == (True, True)

    created = (
        await ok(
            meshctl,
            "--json",
            "policies",
            "create",
            "laptops ssh",
            "--id",
            "lap-ssh",
            "--source",
            "laptops",
            "--destination",
            "servers",
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--port-range",
            "8000-8100",
        )
    ).json()
    assert created["rules"][0]["port_ranges"] == [{"start": 8000, "end": 8100}]
    listed = (await ok(meshctl, "policies", "ls")).out
    assert "laptops -> servers accept tcp 22,8000-8100" in listed
    netmap = (await ok(meshctl, "--json", "peers", "netmap", "web1")).json()
    for _ in range(100):
        if any(r.get("port") == "22022" for r in netmap.get("firewall_rules", [])):
            break
        await asyncio.sleep(0.05)
        netmap = (await ok(meshctl, "--json", "peers", "netmap", "web1")).json()
    assert [r.get("port") for r in netmap["firewall_rules"] if r.get("port")] == ["22", "22022"]

    await ok(
        meshctl,
        "policies",
        "create",
        "ops",
        "--id",
        "ops",
        "--source",
        "laptops",
        "--destination",
        "servers",
        "--protocol",
        "ssh",
        "--authorized-group",
        "laptops=root,deploy",
    )
    ops = (await ok(meshctl, "--json", "policies", "show", "ops")).json()
    assert ops["rules"][0]["authorized_groups"] == {"laptops": ["root", "deploy"]}
    await ok(meshctl, "policies", "disable", "ops")
    await ok(meshctl, "policies", "rm", "ops")
    assert "ops" not in [p["id"] for p in (await ok(meshctl, "--json", "policies")).json()]

    users = (await ok(meshctl, "users")).out
    assert "alice" in users
    assert "alice@example.com" in users
    await ok(meshctl, "groups", "add", "servers", "--user", "alice")
    assert (await ok(meshctl, "--json", "groups", "show", "servers")).json()["users"] == ["alice"]
    await ok(meshctl, "users", "rm", "alice")
    keys = (await ok(meshctl, "--json", "setup-keys", "ls")).json()
    assert {k["name"]: k["used"] for k in keys} == {"srv": 1, "laptops": 1, "gws": 1}
    assert all("key" not in k for k in keys)
    await ok(meshctl, "peers", "rm", srv)
    assert [p["name"] for p in (await ok(meshctl, "--json", "peers")).json()] == ["lap1"]


async def test_failures_are_one_clear_line_with_a_nonzero_exit(meshctl: Meshctl) -> None:
    cases = [
        (
            ("peers", "ls"),
            {"token": "wrong-token-0123456789"},
            1,
            "meshctl: the management API refused the admin token",
        ),
        (
            ("peers", "ls"),
            {"token": None},
            1,
            "meshctl: no admin token: pass --token or set MESHSSH_ADMIN_TOKEN",
        ),
        (
            ("peers", "ls"),
            {"api": "http://127.0.0.1:9"},
            1,
            "meshctl: cannot reach the management API at http://127.0.0.1:9",
        ),
        (("peers", "show", "nope"), {}, 1, "meshctl: no peer with id or name 'nope'"),
        (("groups", "rm", "nope"), {}, 1, "meshctl: group 'nope' does not exist"),
        (
            ("policies", "create", "x", "--source", "a", "--destination", "b"),
            {},
            1,
            "meshctl: rules[0].sources: unknown group 'a'",
        ),
        (
            ("policies", "create", "x", "--source", "Bad!", "--destination", "b"),
            {},
            1,
            "meshctl: rules[0].sources[0]: String should match pattern",
        ),
        (
            ("setup-keys", "create", "k", "--expires-in", "soon"),
            {},
            2,
            "meshctl setup-keys create: error: argument --expires-in: not a duration like 30d",
        ),
        (("peers", "fly"), {}, 2, "meshctl peers: error: argument ACTION: invalid choice"),
    ]
    for args, kw, code, message in cases:
        ran = await meshctl(*args, **kw)
        assert ran.code == code, (args, ran)
        assert ran.out == "", args
        assert len(ran.err.strip().splitlines()) == 1, (args, ran.err)
        assert ran.err.startswith(message), (args, ran.err)


async def test_audit_shows_every_change_and_end_session_lists_it_in_the_map(
    meshctl: Meshctl, nc: NATS
) -> None:
    await ok(meshctl, "groups", "create", "servers")
    key = (
        await ok(meshctl, "--json", "setup-keys", "create", "srv", "--auto-group", "servers")
    ).json()
    srv = await register(meshctl.api, "web1", "127.0.0.2", key["key"])
    await ok(meshctl, "peers", "ssh", "disable", "web1")
    beat = Heartbeat(
        peer_id=srv,
        sent_at=time.time(),
        sessions=(SessionInfo(session_id="a1b2c3d4e5f6", local_user="root", jwt_user="alice"),),
    )
    for _ in range(100):
        await nc.publish(subjects.heartbeat(srv), codec.encode(beat))
        if "a1b2c3d4e5f6" in (await ok(meshctl, "peers", "show", "web1")).out:
            break
        await asyncio.sleep(0.05)
    ended = await ok(meshctl, "peers", "end-session", "web1", "a1b2c3d4e5f6")
    assert f"ended session a1b2c3d4e5f6 on web1 ({srv})" in ended.out
    gone = await meshctl("peers", "end-session", "web1", "nosuchsession")
    assert gone.code == 1
    assert "is not live on peer" in gone.err
    netmap = (await ok(meshctl, "--json", "peers", "netmap", "web1")).json()
    for _ in range(100):
        if "a1b2c3d4e5f6" in netmap["peer"].get("ended_sessions", []):
            break
        await asyncio.sleep(0.05)
        netmap = (await ok(meshctl, "--json", "peers", "netmap", "web1")).json()
    assert netmap["peer"]["ended_sessions"] == ["a1b2c3d4e5f6"]

    log = (await ok(meshctl, "audit", "--kind", "admin-change")).out.splitlines()
    assert log[0].split() == ["SEQ", "WHEN", "KIND", "WHO", "PEER", "WHAT"]
    actions = [" ".join(line.split()[6:]) for line in log[1:]]  # newest first
    assert (
        actions[0] == "DELETE /api/v1/peers/{peer_id}/sessions/{session_id} "
        f"{srv},nosuchsession -> 404"
    )
    assert (
        actions[1] == f"DELETE /api/v1/peers/{{peer_id}}/sessions/{{session_id}} "
        f"{srv},a1b2c3d4e5f6 -> 204"
    )
    assert any(a.startswith(f"PATCH /api/v1/peers/{{peer_id}} {srv} -> 200") for a in actions)
    assert actions[-1] == "POST /api/v1/groups -> 201"
    page = (await ok(meshctl, "--json", "audit", "--peer", "web1", "--limit", "2")).json()
    assert [e["action"] for e in page["events"]] == [
        "DELETE /api/v1/peers/{peer_id}/sessions/{session_id}"
    ] * 2
    assert page["next_before"] > 0
    older = (
        await ok(meshctl, "--json", "audit", "--peer", "web1", "--before", str(page["next_before"]))
    ).json()
    assert [e["action"] for e in older["events"]] == ["PATCH /api/v1/peers/{peer_id}"]
    assert all(e["actor"].startswith("token:") for e in older["events"])
    assert TOKEN not in (await ok(meshctl, "--json", "audit")).out


async def test_bus_revoke_cuts_a_rotated_service_key_off(
    meshctl: Meshctl, nats_server: NatsServer
) -> None:
    old = read_creds(nats_server.creds("authn")).public_key
    authn = await connect_nats(
        nats_server.url, name="old-authn", creds=nats_server.creds("authn"), ca=nats_server.ca
    )
    try:
        assert (await ok(meshctl, "bus", "ls")).out == "(none)\n"
        done = await ok(meshctl, "bus", "revoke", old)
        assert done.out.strip() == f"revoked NATS key {old}"
        async with asyncio.timeout(5):
            while not (authn.is_closed or "revoked" in str(authn.last_error)):
                await asyncio.sleep(0.02)
    finally:
        await authn.close()
    first = (await ok(meshctl, "--json", "bus", "ls")).json()
    again = (await ok(meshctl, "--json", "bus", "revoke", old)).json()
    # the same key again: one entry, its time moved on only if a second has passed
    assert (again["public_key"], again["until"]) == (old, 0)
    assert again["at"] >= first[0]["at"]
    assert again["new"] is (again["at"] > first[0]["at"])
    listed = (await ok(meshctl, "bus", "ls")).out.splitlines()
    assert listed[0].split() == ["KEY", "REVOKED", "FORGOTTEN"]
    assert listed[1].split()[0] == old
    assert listed[1].split()[-1] == "never"
    bad = await meshctl("bus", "revoke", "not-a-key")
    assert bad.code == 1
    assert "is not a NATS user public key" in bad.err


# -- recorded sessions -------------------------------------------------------------------------


async def _store_recording(nc: NATS, peer: str, session: str) -> bytes:
    """A recording as sshd stores it (the header line, then packed event batches); returns
    the asciicast v2 file a reader writes from it."""
    header = {
        "version": 2,
        "width": 100,
        "height": 30,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm"},
        "meshssh": {"user": "alice-id", "local_user": "deploy", "source": "127.0.0.3:5000"},
    }
    first, second = bytearray(EVENTS_MAGIC), bytearray(EVENTS_MAGIC)
    append_event(first, 0.1, "o", b"hello \x1b[1mbold\x1b[0m\r\n")
    append_event(first, 0.2, "r", b"80x24")
    append_event(second, 1.5, "o", "caf\u00e9 \u2713\r\n".encode())
    chunks = [json.dumps(header).encode() + b"\n", pack_chunk(first), pack_chunk(second)]
    js = nc.jetstream()
    for chunk in chunks:
        await js.publish(subjects.recording(peer, session), chunk, timeout=5)
    writer = CastWriter()
    return b"".join(writer.feed(unpack_chunk(chunk)) for chunk in chunks)


async def test_sessions_ls_export_and_play_read_the_recordings_stream_policy_made(
    meshctl: Meshctl, nc: NATS
) -> None:
    info = await nc.jetstream().stream_info(subjects.RECORDINGS_STREAM)  # made by policy
    assert (info.config.max_bytes, info.config.max_age) == (10 * 2**30, 90 * 86400.0)
    stored = await _store_recording(nc, "web1", "abc123def456")
    listed = (await ok(meshctl, "--json", "sessions", "ls")).json()
    assert [(r["session"], r["peer"], r["user"], r["chunks"]) for r in listed] == [
        ("abc123def456", "web1", "alice-id", 3)
    ]
    human = await ok(meshctl, "sessions", "ls")
    assert "abc123def456" in human.out
    assert "alice-id as deploy" in human.out
    exported = await run_command(
        script("meshctl"),
        "sessions",
        "export",
        "abc123def456",
        env={"MESHSSH_API_URL": meshctl.api, "MESHSSH_ADMIN_TOKEN": TOKEN},
        timeout=30,
    )
    assert exported.returncode == 0, exported.err
    assert exported.stdout == stored
    cast = parse_asciicast(exported.stdout)
    assert cast.output() == "hello \x1b[1mbold\x1b[0m\r\ncaf\u00e9 \u2713\r\n"
    started = time.monotonic()
    played = await ok(meshctl, "sessions", "play", "abc123def456", "--speed", "5")
    elapsed = time.monotonic() - started
    assert played.out == cast.output()
    assert elapsed >= 1.5 / 5  # the 1.4 s between the two outputs, 5 times faster
    missing = await meshctl("sessions", "export", "nosuchsession")
    assert missing.code == 1
    assert "no recording of session 'nosuchsession'" in missing.err
    bad = await meshctl("sessions", "play", "abc123def456", "--speed", "0")
    assert (bad.code, bad.err.strip()) == (1, "meshctl: --speed must be above 0")


async def test_policies_create_takes_the_ssh_rules_session_options(meshctl: Meshctl) -> None:
    await ok(meshctl, "groups", "create", "servers")
    await ok(meshctl, "groups", "create", "ops")
    created = await ok(
        meshctl,
        "policies",
        "create",
        "ops ssh",
        "--id",
        "ops-ssh",
        "--source",
        "ops",
        "--destination",
        "servers",
        "--protocol",
        "ssh",
        "--recording",
        "required",
        "--idle-timeout",
        "15m",
        "--max-session",
        "8h",
        "--check-period",
        "12h",
        "--record-exec",
    )
    assert (
        "(recording=required idle_timeout=900s max_session=28800s check_period=43200s "
        "record_exec)" in created.out
    )
    rule = (await ok(meshctl, "--json", "policies", "show", "ops-ssh")).json()["rules"][0]
    assert (rule["recording"], rule["idle_timeout"], rule["record_exec"]) == ("required", 900, True)
    assert "record_input" not in rule  # defaults are left out
    bad = await meshctl(
        "policies", "create", "x", "--source", "ops", "--destination", "servers",
        "--idle-timeout", "5m",
    )  # fmt: skip
    assert bad.code == 1
    assert "idle_timeout: only accept rules with protocol 'ssh' take it" in bad.err
