"""Dashboard security over real HTTP: sign-in through the embedded provider (a real authn
process), a read-only user's 403 on every write, CSRF on every write, logout kills the cookie.

The list of writes comes from the dashboard's own router, so a new write route is covered.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx

from meshssh_policy.web.actions import Actions
from meshssh_testkit.dashboard import sign_in

if TYPE_CHECKING:
    from conftest import Site, SiteStarter


def write_routes() -> list[str]:
    router = Actions(cast(Any, None), cast(Any, None), cast(Any, None)).router()
    return sorted(r.path for r in router.routes if "POST" in getattr(r, "methods", ()))


async def test_behind_https_the_session_cookie_is_secure(start_site: SiteStarter) -> None:
    public = "https://dash.example.test"  # a TLS proxy in front; the test talks to policy
    site = await start_site(public)
    async with httpx.AsyncClient(timeout=15) as http:
        login = await http.get(f"{site.base}/auth/login")
        login_cookie = login.headers["set-cookie"].lower()
        assert login_cookie.startswith("meshssh_login=")
        for attribute in ("httponly", "secure", "samesite=lax", "path=/auth/callback"):
            assert attribute in login_cookie, login_cookie
        assert (
            "redirect_uri=https%3A%2F%2Fdash.example.test%2Fauth%2Fcallback"
            in login.headers["location"]
        )
        page = await http.get(login.headers["location"])
        fields = dict(re.findall(r'type="hidden" name="([a-z_]+)" value="([^"]*)"', page.text))
        back = await http.post(
            login.headers["location"].split("?")[0],
            data={**fields, "username": "alice", "password": "alice-password-0123"},
        )
        callback = back.headers["location"]
        assert callback.startswith(f"{public}/auth/callback?")
        # Another browser (no sign-in cookie) cannot use this code and state: login CSRF.
        async with httpx.AsyncClient(timeout=15) as other:
            forged = await other.get(site.base + callback.removeprefix(public))
        assert forged.status_code == 403
        assert "not started in this browser" in forged.text
        # The sign-in cookie is Secure too, so httpx keeps it off plain http: send it as the
        # browser would over https.
        state = parse_qs(urlsplit(callback).query)["state"][0]
        done = await http.get(
            site.base + callback.removeprefix(public), headers={"Cookie": f"meshssh_login={state}"}
        )
    assert done.status_code == 303
    cookies = done.headers.get_list("set-cookie")
    cookie = next(c for c in cookies if c.startswith("meshssh_session="))
    assert any(c.startswith('meshssh_login=""') for c in cookies)  # spent
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie


async def test_read_only_users_get_403_writes_need_csrf_and_logout_ends_the_cookie(
    site: Site,
) -> None:
    base, replica, peer = site.base, site.replica, site.peer
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
        pages = (
            "/peers",
            f"/peers/{peer}",
            "/users",
            "/groups",
            "/policies",
            "/policies/new",
            "/policies/users-to-servers-ssh",
            "/setup-keys",
            "/audit",
            "/audit?kind=admin-change&user=alice&peer=srv",
            "/live",
        )
        for path in pages:
            shown = await alice.get(base + path)
            assert shown.status_code == 200, (path, shown.text)
            assert shown.headers["content-security-policy"].startswith("default-src 'self'")
        page = await bob.get(f"{base}/peers")
        assert "read-only" in page.text
        assert 'aria-label="SSH switch for srv"' in page.text

        routes = write_routes()
        assert len(routes) >= 9, routes
        ids = {
            "peer_id": peer,
            "session_id": "s0",
            "group_id": "users",
            "policy_id": "users-to-servers-ssh",
            "key_id": "k",
        }
        for route in routes:
            path = route.format(**ids)
            r = await bob.post(
                base + path,
                data={"csrf": bob_csrf, "on": "0", "kind": "user", "member": "bob", "name": "x"},
            )
            assert r.status_code == 403, (route, r.status_code, r.text)
            r = await alice.post(base + path, data={"on": "0", "kind": "user", "member": "bob"})
            assert r.status_code == 403, (route, "no CSRF token", r.text)
            r = await alice.post(base + path, data={"csrf": "x" * 43, "on": "0"})
            assert r.status_code == 403, (route, "wrong CSRF token", r.text)
        assert await ssh_switch(replica, peer) is True  # nothing changed

        ok = await alice.post(f"{base}/peers/{peer}/ssh", data={"csrf": csrf, "on": "0"})
        assert ok.status_code == 303
        assert await ssh_switch(replica, peer) is False
        by_header = await alice.post(
            f"{base}/peers/{peer}/ssh", data={"on": "1"}, headers={"X-CSRF-Token": csrf}
        )
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


class _Controls(HTMLParser):
    """Form controls without a label, and label targets, of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label" and a.get("for"):
            self.labelled.add(str(a["for"]))
        if tag in ("select", "textarea") or (tag == "input" and a.get("type") != "hidden"):
            self.controls.append(a)
        if tag == "input" and a.get("type") == "checkbox":
            self.controls[-1]["checkbox"] = "1"


def unlabelled(page: str) -> list[dict[str, str | None]]:
    """Controls with neither a <label for> nor an aria-label (checkboxes sit inside theirs)."""
    found = _Controls()
    found.feed(page)
    return [
        c
        for c in found.controls
        if not c.get("aria-label") and c.get("id") not in found.labelled and not c.get("checkbox")
    ]


async def test_admin_actions_change_state_through_the_rest_operations_and_are_audited(
    site: Site,
) -> None:
    base, replica, peer = site.base, site.replica, site.peer
    alice, csrf = await sign_in(base, "alice", "alice-password-0123")
    try:
        for path in (
            "/peers",
            f"/peers/{peer}",
            "/groups",
            "/policies/new",
            "/policies/users-to-servers-ssh",
            "/setup-keys",
            "/audit",
        ):
            page = (await alice.get(base + path)).text
            assert unlabelled(page) == [], path  # every control has an accessible name
            assert '<html lang="en">' in page

        async def post(path: str, **form: str) -> httpx.Response:
            return await alice.post(base + path, data={"csrf": csrf, **form})

        assert (await post("/groups", id="ops", name="Operators")).status_code == 303
        bad = await post("/groups", id="Bad Id")
        assert bad.status_code == 422
        assert "id: String should match pattern" in bad.text
        assert (await post("/groups/ops/members/add", kind="peer", member=peer)).status_code == 303
        assert (
            await post("/groups/ops/members/add", kind="user", member="alice")
        ).status_code == 303
        edited = await post(
            "/policies/users-to-servers-ssh",
            name="users reach servers",
            enabled="1",
            r0_sources="users",
            r0_destinations="ops, servers",
            r0_protocol="ssh",
            r0_ports="22",
            r0_action="accept",
            r0_authorized="users: deploy\nops:",
        )
        assert edited.status_code == 303, edited.text
        invalid = await post(
            "/policies/users-to-servers-ssh",
            name="x",
            r0_sources="users",
            r0_destinations="servers",
            r0_protocol="icmp",
            r0_ports="22",
            r0_action="accept",
            r0_authorized="",
        )
        assert invalid.status_code == 422
        shown = 'id="err-r0_ports">rules[0].ports: protocol &#39;icmp&#39; takes no'
        assert shown in invalid.text
        created = await post(
            "/setup-keys",
            name="ci",
            type="one-off",
            expires_days="1",
            usage_limit="1",
            auto_groups="ops",
        )
        assert created.status_code == 200
        key_id = re.search(r'id="key-(k[0-9a-f]+)"><td>ci<', created.text)
        assert key_id
        assert (await post(f"/setup-keys/{key_id[1]}/revoke")).status_code == 303
        gone = await post(f"/peers/{peer}/sessions/nosuch/end")
        assert gone.status_code == 404
    finally:
        await alice.aclose()

    async with replica.client() as api:
        policy = (await api.get("/api/v1/policies/users-to-servers-ssh")).json()
        group = (await api.get("/api/v1/groups/ops")).json()
        key = (await api.get(f"/api/v1/setup-keys/{key_id[1]}")).json()
        events = (await api.get("/api/v1/audit", params={"user": "alice"})).json()["events"]
    assert policy["name"] == "users reach servers"
    assert policy["rules"][0]["authorized_groups"] == {"users": ["deploy"], "ops": []}
    assert (group["peers"], group["users"]) == ([peer], ["alice"])
    assert (key["type"], key["usage_limit"], key["auto_groups"], key["revoked"]) == (
        "one-off",
        1,
        ["ops"],
        True,
    )
    assert [(e["action"], e["result"]) for e in reversed(events)] == [
        ("POST /api/v1/groups", "200"),
        ("PUT /api/v1/groups/{group_id}/peers/{peer_id}", "200"),
        ("PUT /api/v1/groups/{group_id}/users/{user_id}", "200"),
        ("PUT /api/v1/policies/{policy_id}", "200"),
        ("POST /api/v1/setup-keys", "200"),
        ("PATCH /api/v1/setup-keys/{key_id}", "200"),
        ("DELETE /api/v1/peers/{peer_id}/sessions/{session_id}", "404"),
    ]
    assert all(e["actor"] == "user:alice" for e in events)


async def test_admins_by_group_membership_or_the_tokens_groups_claim(
    policy: Any, seed_file: Path, start_site: SiteStarter
) -> None:
    # The seed puts alice and bob in the meshssh group "users"; carol's token says ["ops"].
    site = await start_site(admin_group="users")
    for user, admin in (("alice", True), ("bob", True), ("carol", False)):
        client, _ = await sign_in(site.base, user, f"{user}-password-0123")
        try:
            page = (await client.get(f"{site.base}/peers")).text
        finally:
            await client.aclose()
        assert ("(admin)" in page, "(read-only)" in page) == (admin, not admin), user
    await site.replica.stop()
    by_claim = await policy.start(
        "r2", seed=seed_file, listen=site.base.removeprefix("http://"), admin_group="ops"
    )
    assert by_claim.url
    for user, admin in (("carol", True), ("alice", False)):
        client, _ = await sign_in(site.base, user, f"{user}-password-0123")
        try:
            page = (await client.get(f"{site.base}/peers")).text
        finally:
            await client.aclose()
        assert ("(admin)" in page) == admin, user
