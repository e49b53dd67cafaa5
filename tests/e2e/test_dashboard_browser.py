"""The dashboard in a real browser (Debian's Chromium through Playwright), on the whole system.

alice signs in through the embedded provider's page, then works as an operator would: she
turns SSH off on the server and its sshd stops, then on and it starts; she disables the
legacy TCP/22 policy so her login is refused and creates an ``ssh`` policy (after an inline
validation error) that lets her in again; she ends a live session and the ssh client sees
it close; she filters the audit log. bob, read-only, sees the pages with the controls off.
With MESHSSH_DOCS_SCREENSHOTS set, the test saves the pictures of docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
from typing import TYPE_CHECKING, Any

from playwright.async_api import Page, expect

if TYPE_CHECKING:
    from conftest import DashSystem, Shot

PASSWORDS = {"alice": "alice-dash-password-42", "bob": "bob-dash-password-42"}
USER = getpass.getuser()


async def sign_in(page: Page, base: str, user: str, shot: Any = None) -> None:
    await page.goto(base + "/")
    await expect(
        page.get_by_role("heading", name="Sign in to the meshssh dashboard")
    ).to_be_visible()
    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(PASSWORDS[user])
    if shot is not None:
        await shot("sign-in")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Peers")).to_be_visible()
    await expect(page).to_have_url(re.compile(r"/peers$"))


async def ssh_result(dash: DashSystem, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *dash.ssh(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def until_ssh(dash: DashSystem, ok: bool, timeout: float = 40) -> str:
    """Retry ``ssh id -un`` until it succeeds (or fails), as maps reach the peer."""
    last = ""
    async with asyncio.timeout(timeout):
        while True:
            code, out, err = await ssh_result(dash, "id -un")
            last = err
            if ok and code == 0:
                assert out.strip() == USER
                return err
            if not ok and code != 0:
                return err
            await asyncio.sleep(0.5)
    return last


async def test_an_admin_signs_in_and_works_the_mesh_from_the_browser(
    dash: DashSystem, page: Page, docs_shot: Shot
) -> None:
    base = dash.base
    await sign_in(page, base, "alice", docs_shot)
    row = page.locator(f"#peer-{dash.server_name}")
    switch = page.get_by_role("switch", name=f"SSH switch for {dash.server_name}")
    await expect(switch).to_have_attribute("aria-checked", "true")
    async with asyncio.timeout(30):
        while await row.locator("[data-ssh-state]").get_attribute("data-ssh-state") != "running":
            await page.reload()
            await asyncio.sleep(0.5)
    await expect(row).to_contain_text("running: the switch is on")
    await docs_shot("peers")
    await docs_shot("peers-390", width=390)

    # SSH off: the server's sshd stops; on: it starts again.
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "false")
    async with asyncio.timeout(30):
        while await dash.sshd_state() == "running":
            await asyncio.sleep(0.1)
    await expect(row).to_contain_text("off: the switch is off")
    await switch.focus()  # and back on with the keyboard
    await page.keyboard.press("Enter")
    await expect(switch).to_have_attribute("aria-checked", "true")
    async with asyncio.timeout(30):
        while await dash.sshd_state() != "running":
            await asyncio.sleep(0.1)

    # alice logs in through the legacy TCP/22 policy...
    await dash.login()
    await until_ssh(dash, ok=True)
    # ...which she disables: refused.
    await page.get_by_role("link", name="Policies").click()
    await page.get_by_role("button", name="Disable policy users reach servers on TCP 22").click()
    await expect(
        page.get_by_role("button", name="Enable policy users reach servers on TCP 22")
    ).to_be_visible()
    await until_ssh(dash, ok=False)
    # An ssh policy that names her local account lets her in again.
    await page.get_by_role("link", name="New policy").click()
    await page.get_by_label("Name", exact=True).fill("ssh for users")
    await page.locator("#r0_sources").fill("users")
    await page.locator("#r0_destinations").fill("nosuch")
    await page.locator("#r0_protocol").select_option("ssh")
    await page.locator("#r0_ports").fill("22")
    await page.locator("#r0_authorized").fill(f"users: {USER}")
    await page.get_by_role("button", name="Save policy").click()
    error = page.locator("#err-r0_destinations")
    await expect(error).to_contain_text("unknown group 'nosuch'")
    await expect(page.locator("#r0_destinations")).to_have_attribute("aria-invalid", "true")
    await docs_shot("policy-form")
    await page.locator("#r0_destinations").fill("servers")
    await page.get_by_role("button", name="Save policy").click()
    await expect(page.get_by_role("heading", name="Policies")).to_be_visible()
    await expect(page.get_by_text("users → servers ssh 22 accept")).to_be_visible()
    await docs_shot("policies")
    await until_ssh(dash, ok=True)

    # A live session, ended from the peer's page: the ssh client sees it close.
    await page.goto(f"{base}/peers/{await dash.server_id()}")
    await expect(page.locator("[data-live=sessions]")).to_have_text("0", timeout=30_000)
    live = await asyncio.create_subprocess_exec(
        *dash.ssh("echo started; exec sleep 120"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert live.stdout is not None
        async with asyncio.timeout(30):
            assert (await live.stdout.readline()).strip() == b"started"
        # The live strip counts the session without a reload (it polls every 3 s).
        await expect(page.locator("[data-live=sessions]")).to_have_text("1", timeout=30_000)
        await expect(page.locator("#live")).to_contain_text(f"alice → {USER}@{dash.server_name}")
        # The row of this session (its command is summarised as "echo +4"; sessions of the
        # earlier `id -un` runs may still be listed for a few seconds).
        row = page.locator("tr[data-session]", has_text="echo +")
        end = row.get_by_role("button", name=re.compile(r"^End session .* of alice$"))
        async with asyncio.timeout(30):
            while not await end.count():
                await asyncio.sleep(0.5)
                await page.reload()
        await expect(page.get_by_text("SHA256:")).to_be_visible()
        await docs_shot("peer")
        await end.first.click()
        async with asyncio.timeout(30):
            _, live_err = await live.communicate()
        assert live.returncode != 0
        assert b"ended" in live_err or b"revoked" in live_err, live_err
    finally:
        with contextlib.suppress(ProcessLookupError):
            live.kill()
        await live.wait()

    # Groups, users and setup keys.
    await page.get_by_role("link", name="Groups").click()
    await page.get_by_label("Add user", exact=True).first.wait_for()
    servers = page.locator("section", has=page.get_by_role("heading", name=re.compile("^Servers")))
    await servers.get_by_label("Add user").select_option("bob")
    await servers.get_by_role("button", name="Add").first.click()
    await expect(page.get_by_role("button", name="Remove user bob from servers")).to_be_visible()
    await docs_shot("groups")
    await page.get_by_role("button", name="Remove user bob from servers").click()
    await expect(page.get_by_role("button", name="Remove user bob from servers")).to_have_count(0)
    await page.get_by_role("link", name="Users").click()
    await expect(page.get_by_role("cell", name="alice Alice Demo")).to_be_visible()
    await docs_shot("users")
    await page.get_by_role("link", name="Setup keys").click()
    await page.get_by_label("Name").fill("ci runners")
    await page.get_by_role("button", name="Create setup key").click()
    key = await page.get_by_label("Key", exact=True).input_value()
    assert len(key) >= 16
    await docs_shot("setup-keys")
    await page.get_by_role("button", name="Revoke setup key ci runners").click()
    await expect(page.get_by_role("button", name="Revoke setup key ci runners")).to_have_count(0)
    assert key not in await page.content()  # shown once

    # The audit log, filtered.
    await page.get_by_role("link", name="Audit").click()
    await page.get_by_label("Kind").select_option("admin-change")
    await page.get_by_label("User").fill("alice")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"kind=admin-change"))
    rows = page.locator("#audit tbody tr")
    await expect(rows.first).to_have_attribute("data-kind", "admin-change")
    kinds = set(await rows.evaluate_all("rs => rs.map(r => r.dataset.kind)"))
    assert kinds == {"admin-change"}
    text = await page.locator("#audit").inner_text()
    for action in (
        "PATCH /api/v1/peers/{peer_id}",
        "POST /api/v1/policies",
        "DELETE /api/v1/peers/{peer_id}/sessions/{session_id}",
        "POST /api/v1/setup-keys",
    ):
        assert action in text
    assert "user:alice" in text
    await docs_shot("audit")
    await page.get_by_label("Kind").select_option("session-start")
    await page.get_by_label("User").fill("")
    await page.get_by_label("Peer").fill(dash.server_name)
    await page.get_by_role("button", name="Filter").click()
    await expect(rows.first).to_have_attribute("data-kind", "session-start")
    assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.kind)")) == {"session-start"}

    # Sign out: the pages ask for a sign-in again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Signed out")).to_be_visible()
    await page.goto(base + "/peers")
    await expect(
        page.get_by_role("heading", name="Sign in to the meshssh dashboard")
    ).to_be_visible()


async def test_a_read_only_user_sees_the_pages_with_every_control_off(
    dash: DashSystem, page: Page
) -> None:
    await sign_in(page, dash.base, "bob")
    await expect(page.get_by_text("bob@example.com (read-only)")).to_be_visible()
    await page.keyboard.press("Tab")  # the keyboard starts at "Skip to content", then the menu
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Peers")).to_be_focused()
    switch = page.get_by_role("switch", name=f"SSH switch for {dash.server_name}")
    await expect(switch).to_be_disabled()
    await page.get_by_role("link", name="Policies").click()
    await expect(page.get_by_role("button", name=re.compile("^Disable policy"))).to_be_disabled()
    await expect(page.get_by_role("link", name="New policy")).to_have_count(0)
    # A write forced from the page (as a script would) is refused with 403.
    status = await page.evaluate("""async () => {
        const csrf = document.querySelector('input[name=csrf]').value;
        const r = await fetch('/policies/users-to-servers-ssh/enabled', {method: 'POST',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'},
            body: 'on=0&csrf=' + encodeURIComponent(csrf)});
        return r.status;
    }""")
    assert status == 403
    await expect(page.get_by_role("button", name=re.compile("^Disable policy"))).to_be_visible()
