"""Dashboard security over real HTTP: sign-in through the embedded provider (a real authn
process), a read-only user's 403 on every write, CSRF on every write, logout kills the cookie.

The list of writes comes from the dashboard's own router, so a new write route is covered.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, cast

import httpx

from meshssh_policy.web.actions import Actions
from meshssh_testkit.dashboard import add_user, sign_in
from meshssh_testkit.plugin import ServiceFactory

SERVER_KEY = "meshssh-demo-server-key-0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_routes() -> list[str]:
    router = Actions(cast(Any, None), cast(Any, None), cast(Any, None)).router()
    return sorted(r.path for r in router.routes if "POST" in getattr(r, "methods", ()))


async def test_read_only_users_get_403_writes_need_csrf_and_logout_ends_the_cookie(
    policy: Any, seed_file: Path, register: Any, services: ServiceFactory, nats_url: str,
    tmp_path: Path, poll: Any,
) -> None:  # fmt: skip
    users = tmp_path / "users.json"
    await add_user(users, "alice", "alice-password-0123", groups=("users",))
    await add_user(users, "bob", "bob-password-0123")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    await services.start(
        "meshssh-authn", "--nats-url", nats_url, "--listen", "127.0.0.1:0",
        "--users-file", str(users), "--dashboard-redirect-uri", f"{base}/auth/callback",
    )  # fmt: skip
    replica = await policy.start(seed=seed_file, listen=f"127.0.0.1:{port}",
                                 admin_users=("alice",))  # fmt: skip
    peer = (await register("srv", "127.0.0.9", SERVER_KEY)).peer_id
    async with replica.client() as api:  # until authn has published its issuer
        await poll(lambda: True)
        for _ in range(300):
            if (await api.get("/api/v1/auth/config")).status_code == 200:
                break
            await poll(lambda: True, 0.05)

    async with httpx.AsyncClient(timeout=10) as anonymous:
        page = await anonymous.get(f"{base}/peers")
        assert page.status_code == 303
        assert page.headers["location"] == "/auth/login?next=/peers"
        assert (
            await anonymous.post(f"{base}/peers/{peer}/ssh", data={"on": "0"})
        ).status_code == 401

    bob, bob_csrf = await sign_in(base, "bob", "bob-password-0123")
    alice, csrf = await sign_in(base, "alice", "alice-password-0123")
    try:
        cookie = next(c for c in alice.cookies.jar if c.name == "meshssh_session")
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert not cookie.secure  # http: no Secure
        pages = ("/peers", f"/peers/{peer}", "/users", "/groups", "/policies", "/policies/new",
                 "/policies/users-to-servers-ssh", "/setup-keys", "/audit",
                 "/audit?kind=admin-change&user=alice&peer=srv", "/live")  # fmt: skip
        for path in pages:
            shown = await alice.get(base + path)
            assert shown.status_code == 200, (path, shown.text)
            assert shown.headers["content-security-policy"].startswith("default-src 'self'")
        page = await bob.get(f"{base}/peers")
        assert "read-only" in page.text
        assert 'aria-label="SSH switch for srv"' in page.text

        routes = write_routes()
        assert len(routes) >= 9, routes
        ids = {"peer_id": peer, "session_id": "s0", "group_id": "users",
               "policy_id": "users-to-servers-ssh", "key_id": "k"}  # fmt: skip
        for route in routes:
            path = route.format(**ids)
            r = await bob.post(base + path, data={"csrf": bob_csrf, "on": "0", "kind": "user",
                                                  "member": "bob", "name": "x"})  # fmt: skip
            assert r.status_code == 403, (route, r.status_code, r.text)
            r = await alice.post(base + path, data={"on": "0", "kind": "user", "member": "bob"})
            assert r.status_code == 403, (route, "no CSRF token", r.text)
            r = await alice.post(base + path, data={"csrf": "x" * 43, "on": "0"})
            assert r.status_code == 403, (route, "wrong CSRF token", r.text)
        assert await ssh_switch(replica, peer) is True  # nothing changed

        ok = await alice.post(f"{base}/peers/{peer}/ssh", data={"csrf": csrf, "on": "0"})
        assert ok.status_code == 303
        assert await ssh_switch(replica, peer) is False
        by_header = await alice.post(f"{base}/peers/{peer}/ssh", data={"on": "1"},
                                     headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert by_header.status_code == 303
        assert await ssh_switch(replica, peer) is True

        sid = cookie.value
        out = await alice.post(f"{base}/auth/logout", data={"csrf": csrf})
        assert out.status_code == 303
        async with httpx.AsyncClient(timeout=10, cookies={"meshssh_session": sid}) as stale:
            assert (await stale.get(f"{base}/peers")).status_code == 303  # to sign-in again
            dead = await stale.post(f"{base}/peers/{peer}/ssh", data={"csrf": csrf, "on": "0"})
            assert dead.status_code == 401
        assert await ssh_switch(replica, peer) is True
    finally:
        await alice.aclose()
        await bob.aclose()

    async with replica.client() as api:
        query = {"user": "alice", "kind": "admin-change"}
        events = (await api.get("/api/v1/audit", params=query)).json()["events"]
    assert [(e["actor"], e["action"], e["detail"]) for e in events] == [
        ("user:alice", "PATCH /api/v1/peers/{peer_id}", '{"ssh_enabled":true}'),
        ("user:alice", "PATCH /api/v1/peers/{peer_id}", '{"ssh_enabled":false}'),
    ]


async def ssh_switch(replica: Any, peer: str) -> bool:
    """The admin switch as the REST API shows it."""
    async with replica.client() as api:
        return bool((await api.get(f"/api/v1/peers/{peer}")).json()["ssh_enabled"])
