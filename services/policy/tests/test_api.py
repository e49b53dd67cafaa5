"""The REST API: validation errors name the field, auth, references, public endpoints."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_common.wire import JwksSnapshot, JwtConfig, OidcClientConfig
from meshssh_testkit import NatsServer
from meshssh_testkit.signing import signed_jwks

from .conftest import bus_jwks_signer

SERVER_KEY = "meshssh-demo-server-key-0001"
LAPTOP_KEY = "meshssh-demo-laptop-key-0001"
RULE = {"sources": ["users"], "destinations": ["servers"], "protocol": "tcp", "ports": ["22"]}


INVALID = [
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "protocol": "sctp"}]},
        422,
        "rules[0].protocol: Input should be 'all', 'tcp', 'udp', 'icmp' or 'ssh'",
    ),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "ports": ["70000"]}]},
        422,
        "rules[0].ports: 70000 is not a port (1-65535)",
    ),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "ports": ["ssh"]}]},
        422,
        "rules[0].ports[0]: String should match pattern",
    ),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "protocol": "icmp"}]},
        422,
        "rules[0].ports: protocol 'icmp' takes no ports or port_ranges",
    ),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "port_ranges": [{"start": 30, "end": 20}]}]},
        422,
        "rules[0].port_ranges[0]: start 30 is after end 20",
    ),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "authorized_groups": {"users": []}}]},
        422,
        "rules[0].authorized_groups: only rules with protocol 'ssh' take them",
    ),
    (
        "/api/v1/policies",
        {
            "name": "x",
            "rules": [{**RULE, "protocol": "ssh", "authorized_groups": {"users": ["-x"]}}],
        },
        422,
        "rules[0].authorized_groups.users[0]: String should match pattern",
    ),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [{**RULE, "destinations": ["nope"]}]},
        400,
        "rules[0].destinations: unknown group 'nope'",
    ),
    ("/api/v1/policies", {"name": "x", "rules": []}, 422, "rules: List should have at least 1"),
    (
        "/api/v1/policies",
        {"name": "x", "rules": [RULE], "colour": 1},
        422,
        "colour: Extra inputs are not permitted",
    ),
    ("/api/v1/groups", {"id": "Bad Id"}, 422, "id: String should match pattern"),
    (
        "/api/v1/groups",
        {"id": "g", "peers": ["nosuchpeer"]},
        400,
        "peers: unknown peer 'nosuchpeer'",
    ),
    ("/api/v1/groups", {"id": "servers"}, 409, "group 'servers' already exists"),
    ("/api/v1/users", {"email": "a@b"}, 422, "id: Field required"),
    (
        "/api/v1/setup-keys",
        {"name": "k", "auto_groups": ["nope"]},
        400,
        "auto_groups: unknown group 'nope'",
    ),
    (
        "/api/v1/setup-keys",
        {"name": "k", "usage_limit": -1},
        422,
        "usage_limit: Input should be greater than or equal to 0",
    ),
]


async def test_invalid_writes_get_a_4xx_naming_the_field(policy: Any, seed_file: Any) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:
        for path, body, status, error in INVALID:
            r = await api.post(path, json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"].startswith(error), (body, r.json()["error"])
        assert (await api.get("/api/v1/policies")).json()[0]["id"] == "users-to-servers-ssh"
        assert len((await api.get("/api/v1/policies")).json()) == 1  # nothing was written


async def test_the_api_needs_the_admin_token_except_its_public_endpoints(policy: Any) -> None:
    replica = await policy.start()
    for token in (None, "wrong-token-0123456789"):
        async with replica.client(token) as api:
            for method, path in [
                ("GET", "/api/v1/peers"),
                ("POST", "/api/v1/groups"),
                ("DELETE", "/api/v1/policies/x"),
            ]:
                r = await api.request(method, path, json={"id": "g"})
                assert r.status_code == 401, (method, path)
                assert r.json()["error"] == "missing or wrong admin token"
            assert (await api.get("/api/v1/ssh/known_hosts")).status_code == 200
            assert (await api.get("/docs")).status_code == 200
            assert (await api.get("/openapi.json")).status_code == 200


async def test_references_are_kept_consistent(policy: Any, seed_file: Any) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:
        r = await api.delete("/api/v1/groups/servers")
        assert r.status_code == 409
        assert r.json()["error"] == "group 'servers' is used by policy 'users-to-servers-ssh'"
        assert (await api.delete("/api/v1/policies/users-to-servers-ssh")).status_code == 204
        r = await api.delete("/api/v1/groups/servers")
        assert "auto-group of setup key" in r.json()["error"]
        assert (await api.get("/api/v1/policies/users-to-servers-ssh")).status_code == 404
        assert (await api.delete("/api/v1/users/alice")).status_code == 204
        users = (await api.get("/api/v1/groups/users")).json()["users"]
        assert users == ["bob"]
        assert (await api.delete("/api/v1/users/alice")).json()["error"] == (
            "user 'alice' does not exist"
        )


async def test_membership_routes_are_idempotent_and_need_existing_members(
    policy: Any, seed_file: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:
        r = await api.post("/api/v1/users", json={"id": "auth0|carol", "email": "c@x"})
        assert r.status_code == 201
        for _ in range(2):
            r = await api.put("/api/v1/groups/users/users/auth0|carol")
            assert r.json()["users"] == ["alice", "bob", "auth0|carol"]
        assert (await api.get("/api/v1/users/auth0|carol")).json()["groups"] == ["users"]
        r = await api.put("/api/v1/groups/users/users/nobody")
        assert (r.status_code, r.json()["error"]) == (404, "user 'nobody' does not exist")
        r = await api.delete("/api/v1/groups/users/users/auth0|carol")
        assert r.json()["users"] == ["alice", "bob"]


async def test_known_hosts_lists_every_host_key_for_ports_22_and_22022(
    policy: Any, register: Any, seed_file: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    await register("srv1", "127.0.0.2", SERVER_KEY)
    await register("lap1", "127.0.0.3", LAPTOP_KEY, host_key="")
    async with replica.client(None) as api:
        r = await api.get("/api/v1/ssh/known_hosts")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    assert r.text.splitlines() == [
        f"srv1,127.0.0.2 {key}",
        f"[srv1]:22022,[127.0.0.2]:22022 {key}",
    ]


async def test_auth_config_comes_from_authn_and_its_jwt_config_reaches_ssh_peers(
    policy: Any,
    register: Any,
    seed_file: Any,
    nc: NATS,
    map_watch: Any,
    nats_server: NatsServer,
) -> None:
    replica = await policy.start(seed=seed_file)
    srv = (await register("srv1", "127.0.0.2", SERVER_KEY)).peer_id
    lap = (await register("lap1", "127.0.0.3", LAPTOP_KEY)).peer_id
    async with replica.client(None) as api:
        r = await api.get("/api/v1/auth/config")
    assert r.status_code == 503
    assert "meshssh-authn has not published" in r.json()["error"]

    jwt = JwtConfig(issuer="http://127.0.0.1:8081", audiences=("meshssh",), max_token_age=300)
    client = OidcClientConfig(
        issuer="http://127.0.0.1:8081",
        client_id="meshssh-cli",
        device_authorization_endpoint="http://127.0.0.1:8081/device",
        token_endpoint="http://127.0.0.1:8081/token",
    )
    kv = await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS)
    snapshot = JwksSnapshot(jwt=jwt, client=client)
    await kv.put(subjects.JWKS_KEY, signed_jwks(snapshot, bus_jwks_signer(nats_server)))
    await map_watch.wait(lambda: map_watch.latest(srv).peer.jwt == jwt)
    assert map_watch.latest(lap).peer.jwt is None  # no SSH there
    async with replica.client(None) as api:
        r = await api.get("/api/v1/auth/config")
        body = r.json()
    # what `meshssh login` decodes it into
    assert msgspec.json.decode(r.content, type=OidcClientConfig) == msgspec.structs.replace(
        client, max_token_age=300
    )
    assert body == {
        "issuer": "http://127.0.0.1:8081",
        "client_id": "meshssh-cli",
        "device_authorization_endpoint": "http://127.0.0.1:8081/device",
        "token_endpoint": "http://127.0.0.1:8081/token",
        "scopes": ["openid", "email", "profile"],
        "audience": "",
        "use_id_token": False,
        "token_issuer": "http://127.0.0.1:8081",
        "audiences": ["meshssh"],
        "user_id_claim": "sub",
        "max_token_age": 300,
        "clock_skew": 60,
    }


async def test_the_dashboard_needs_a_sign_in_and_the_admin_token_does_not_open_it(
    policy: Any, seed_file: Any
) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:  # the admin token is for the API, not the browser
        assert (await api.get("/")).headers["location"] == "/peers"
        r = await api.get("/peers")
    assert r.status_code == 303
    assert r.headers["location"] == "/auth/login?next=/peers"
