"""SSH from the browser (issue 20): the dashboard's terminal, through meshssh-gateway, in Debian's
Chromium driven by Playwright.

The whole system of the dashboard tests (nats-server, authn's embedded provider, policy with
``--gateway-url``, the server peer's agent with sshd) plus ``meshssh-gateway``, a mesh peer
registered with a gateway setup key. An ``ssh`` policy lets alice (group ``terminal``) log in
to the server as the test's own account; bob's rules do not. alice connects from the peer's
page, types, reads the output on the screen, resizes the window and sees ``stty size`` follow;
the policy's removal closes her terminal with "access revoked"; bob gets a refusal and no
terminal. WebSockets from a foreign origin, or without a valid ticket, are refused.
"""

from __future__ import annotations

import asyncio
import getpass
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from playwright.async_api import Page, expect

from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import ServiceProcess

if TYPE_CHECKING:
    from conftest import DashFactory, DashSystem

pytestmark = pytest.mark.timeout(300)  # the whole system starts for each test
ADMIN_TOKEN = "dashboard-e2e-admin-token-0123456789"  # conftest's
PASSWORDS = {"alice": "alice-dash-password-42", "bob": "bob-dash-password-42"}
USER = getpass.getuser()
GATEWAY_KEY = "meshssh-e2e-gateway-key-0001"
BUFFER_JS = """() => {
  const t = window.meshsshTerminal;
  if (!t) { return ""; }
  const b = t.buffer.active, out = [];
  for (let i = 0; i < b.length; i++) { out.push(b.getLine(i).translateToString(true)); }
  return out.join("\\n");
}"""
OPEN_WS_JS = """(url) => new Promise((done) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const seen = [];
  ws.onopen = () => seen.push("open");
  ws.onmessage = (e) => seen.push(typeof e.data === "string" ? e.data : "binary");
  ws.onclose = (e) => { seen.push("close " + e.code); done(seen); };
  setTimeout(() => done(seen.concat(["timeout"])), 20000);
})"""


@dataclass
class TerminalSystem:
    dash: DashSystem
    gateway: ServiceProcess
    gateway_url: str
    server_id: str
    issuer: str


async def admin(system: DashSystem, method: str, path: str, body: Any = None) -> Any:
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.request(
            method,
            f"{system.base}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert r.status_code < 300, (method, path, r.status_code, r.text)
    return r.json() if r.content else None


@pytest.fixture
async def terminals(
    dash_factory: DashFactory, nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[TerminalSystem]:
    """The dashboard system with a gateway, and alice's ssh policy in place of the legacy one."""
    port, gateway_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    async with dash_factory("--gateway-url", gateway_url, port=port) as dash:
        await admin(dash, "POST", "/groups", {"id": "terminal"})
        await admin(dash, "PUT", "/groups/terminal/users/alice")
        await admin(dash, "POST", "/groups", {"id": "gateways"})
        policy = {
            "id": "terminal-ssh",
            "name": "terminal users reach servers",
            "rules": [
                {
                    "sources": ["users", "gateways"],
                    "destinations": ["servers"],
                    "protocol": "ssh",
                    "authorized_groups": {"terminal": [USER]},
                }
            ],
        }
        await admin(dash, "POST", "/policies", policy)
        await admin(dash, "PATCH", "/policies/users-to-servers-ssh", {"enabled": False})
        key = {
            "name": "gateways",
            "kind": "gateway",
            "key": GATEWAY_KEY,
            "expires_in": 0,
            "auto_groups": ["gateways"],
        }
        await admin(dash, "POST", "/setup-keys", key)
        nats = ["--nats-url", nats_server.url]
        if nats_server.ca is not None:
            nats += ["--nats-ca", str(nats_server.ca)]
        gateway = await services.start(
            "meshssh-gateway",
            *nats,
            "--mesh-ip",
            f"{dash.net}.4",
            "--name",
            f"{dash.server_name.removesuffix('-server')}-gw",
            "--management-url",
            dash.base,
            "--state-dir",
            str(tmp_path / "gateway"),
            "--listen",
            f"127.0.0.1:{gateway_port}",
            "--allowed-origin",
            dash.base,
            env={"MESHSSH_SETUP_KEY": GATEWAY_KEY},
        )
        issuer = str((await admin(dash, "GET", "/auth/config"))["token_issuer"])
        try:
            yield TerminalSystem(dash, gateway, gateway_url, await dash.server_id(), issuer)
        finally:
            print("gateway's log (shown when the test failed):\n" + gateway.output()[-8000:])


async def sign_in(page: Page, base: str, user: str) -> None:
    await page.goto(base + "/peers")
    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(PASSWORDS[user])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Peers")).to_be_visible()


async def screen(page: Page) -> str:
    return str(await page.evaluate(BUFFER_JS))


async def until_on_screen(page: Page, pattern: str, timeout: float = 30) -> re.Match[str]:
    """Wait until a line of the terminal matches ``pattern`` (whole line, trailing blanks off)."""
    wanted = re.compile(pattern)
    last = ""
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await screen(page)
                for line in last.splitlines():
                    if found := wanted.fullmatch(line.rstrip()):
                        return found
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"no line matching {pattern!r} on screen:\n{last}") from None


async def open_terminal(page: Page, system: TerminalSystem) -> None:
    """alice, on the server's page: Connect as the test's account; the terminal is live."""
    await page.goto(f"{system.dash.base}/peers/{system.server_id}")
    chooser = page.get_by_label(f"Local user on {system.dash.server_name}")
    await expect(chooser).to_have_value(USER)  # the one local user her rules allow
    await page.get_by_role("button", name=f"Connect to {system.dash.server_name}").click()
    await expect(page).to_have_url(re.compile(r"/ui/terminal\?ticket="))
    await expect(page.locator("#term-status")).to_have_text("Connected", timeout=30_000)


async def test_alice_types_in_a_terminal_that_follows_the_window_until_access_is_revoked(
    terminals: TerminalSystem, page: Page
) -> None:
    system = terminals
    await sign_in(page, system.dash.base, "alice")
    row = page.locator(f"#peer-{system.dash.server_name}")
    await expect(
        row.get_by_role("button", name=f"Connect to {system.dash.server_name}")
    ).to_be_visible()
    await open_terminal(page, system)

    await page.locator("#terminal").click()
    await page.keyboard.type("echo browser-ok")
    await page.keyboard.press("Enter")
    await until_on_screen(page, r"browser-ok")

    cols, rows = await page.evaluate("() => [meshsshTerminal.cols, meshsshTerminal.rows]")
    await page.set_viewport_size({"width": 760, "height": 430})
    async with asyncio.timeout(10):
        while (await page.evaluate("() => meshsshTerminal.cols")) == cols:
            await asyncio.sleep(0.05)
    new_cols, new_rows = await page.evaluate("() => [meshsshTerminal.cols, meshsshTerminal.rows]")
    assert (new_cols, new_rows) != (cols, rows)
    assert new_cols < cols
    await page.keyboard.type("stty size")
    await page.keyboard.press("Enter")
    await until_on_screen(page, rf"{new_rows} {new_cols}")

    # The policy that lets her in goes: sshd closes the session, saying why on the screen.
    await admin(system.dash, "DELETE", "/policies/terminal-ssh")
    await until_on_screen(page, r"meshssh: access revoked: .*", timeout=40)
    await expect(page.locator("#term-status")).to_have_text("Ended", timeout=20_000)
    await expect(page.locator("#term-ended")).to_contain_text("access revoked")
    assert await page.evaluate("() => meshsshTerminal.options.disableStdin")


async def test_bob_whose_rules_do_not_allow_the_peer_gets_a_refusal_and_no_terminal(
    terminals: TerminalSystem, page: Page
) -> None:
    system = terminals
    await sign_in(page, system.dash.base, "bob")
    name = system.dash.server_name
    await expect(page.locator(f"#peer-{name}")).to_contain_text(
        f"your rules do not let you log in to {name}"
    )
    await page.goto(f"{system.dash.base}/peers/{system.server_id}")
    await expect(
        page.get_by_text(f"No terminal: your rules do not let you log in to {name}")
    ).to_be_visible()
    assert await page.get_by_role("button", name=f"Connect to {name}").count() == 0
    # Forced anyway (the form posted by hand): a clear page, no ticket, no terminal.
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    forced = await page.request.post(
        f"{system.dash.base}/ui/peers/{system.server_id}/terminal",
        form={"csrf": csrf or "", "local_user": USER},
        max_redirects=0,
    )
    assert forced.status == 403
    text = await forced.text()
    assert f"your rules do not let you log in to {name}: no enabled policy grants it" in text
    assert "ticket" not in forced.headers.get("location", "")


async def test_websockets_from_a_foreign_origin_or_without_a_valid_ticket_are_refused(
    terminals: TerminalSystem, page: Page
) -> None:
    system = terminals
    await sign_in(page, system.dash.base, "alice")
    await page.goto(f"{system.dash.base}/peers/{system.server_id}")
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    made = await page.request.post(
        f"{system.dash.base}/ui/peers/{system.server_id}/terminal",
        form={"csrf": csrf or "", "local_user": USER},
        max_redirects=0,
    )
    assert made.status == 303
    ticket = made.headers["location"].split("ticket=", 1)[1]
    ws_url = f"{system.gateway_url.replace('http://', 'ws://')}/v1/terminal?ticket={ticket}"

    # The same browser, on another origin (authn's provider): refused before the upgrade.
    foreign = await page.context.new_page()
    await foreign.goto(system.issuer + "/.well-known/openid-configuration")
    seen = await foreign.evaluate(OPEN_WS_JS, ws_url)
    assert "open" not in seen, seen
    assert seen[-1] == "close 1006", seen
    await foreign.close()
    async with httpx.AsyncClient(timeout=10) as http:
        for origin in ("http://evil.example", system.issuer, ""):
            headers = {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            if origin:
                headers["Origin"] = origin
            r = await http.get(f"{system.gateway_url}/v1/terminal?ticket={ticket}", headers=headers)
            assert r.status_code == 403, (origin, r.status_code, r.text)

    # From the dashboard's origin (a static file: no CSP of a page in the way), without a
    # ticket or with a forged one: no terminal.
    await page.goto(f"{system.dash.base}/static/xterm-VERSION.txt")
    for url in (ws_url.split("?")[0], ws_url.split("?")[0] + "?ticket=" + "x" * 43):
        seen = await page.evaluate(OPEN_WS_JS, url)
        assert "binary" not in seen, seen
        assert seen[-1].startswith("close"), seen
        if "open" in seen:  # refused after the upgrade: the reason comes first
            assert any('"type":"error"' in s.replace(" ", "") for s in seen), seen

    # The refusals did not use the ticket up: the terminal page opens with it.
    await page.goto(f"{system.dash.base}{made.headers['location']}")
    await expect(page.locator("#term-status")).to_have_text("Connected", timeout=30_000)
    await page.locator("#terminal").click()
    await page.keyboard.type("echo still-mine")
    await page.keyboard.press("Enter")
    await until_on_screen(page, r"still-mine")
    # ...and only once: a second socket with it is refused.
    seen = await page.evaluate(OPEN_WS_JS, ws_url)
    assert "binary" not in seen, seen
    assert seen[-1].startswith("close"), seen
    # The shell's exit status is shown when it ends.
    await page.keyboard.type("exit 3")
    await page.keyboard.press("Enter")
    await expect(page.locator("#term-ended")).to_have_text(
        "Session ended, exit status 3", timeout=20_000
    )
    await expect(page.locator("#term-status")).to_have_text("Ended")
