"""A recorded session played back in the dashboard, in a real browser (Debian's Chromium
through Playwright), on the whole system.

An ``ssh`` policy with ``recording: required`` replaces the demo's TCP/22 one; alice runs a
real OpenSSH PTY session (``ssh -tt``) through the server's relay that prints a marker, and
the server's sshd records it into ``MESHSSH_RECORDINGS``. alice then signs in, opens
Recordings, the session's player, presses play, and the terminal the player draws shows the
marker. The audit log's ``session-end`` links to the same player. No script error and no
Content-Security-Policy refusal on the way.
"""

from __future__ import annotations

import asyncio
import getpass
import re
from typing import TYPE_CHECKING, Any

from playwright.async_api import ConsoleMessage, Page, expect

if TYPE_CHECKING:
    from conftest import DashSystem, Shot

PASSWORDS = {"alice": "alice-dash-password-42"}
USER = getpass.getuser()
# The remote shell computes the marker, so only the command's output (not its text) holds it.
COMMAND = "printf 'rec-%s-marker\\n' $((6*7)); sleep 0.3"
MARKER = "rec-42-marker"


async def sign_in(page: Page, base: str, user: str) -> None:
    await page.goto(base + "/")
    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(PASSWORDS[user])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Peers")).to_be_visible()


async def ssh_pty(dash: DashSystem) -> tuple[int, str, str]:
    """A real OpenSSH session with a remote PTY (``-tt``), as alice."""
    proc = await asyncio.create_subprocess_exec(
        *dash.ssh("-tt", COMMAND),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def recorded_session(dash: DashSystem, timeout: float = 60) -> str:
    """Run the PTY session until the server records it (the new policy has to reach the
    server first: until then the session runs under the old rule, unrecorded, or is refused);
    returns the recording's session id."""
    last = ""
    async with asyncio.timeout(timeout):
        while True:
            code, out, err = await ssh_pty(dash)
            last = f"exit {code}: {err.strip()[-300:]}"
            if code == 0 and MARKER in out:
                listed = await dash.api("/api/v1/recordings")
                assert isinstance(listed, list)
                if listed:
                    return str(listed[0]["session"])
            await asyncio.sleep(0.5)
    raise AssertionError(last)


async def test_an_admin_plays_a_recorded_ssh_session_in_the_dashboard(
    dash: DashSystem, page: Page, docs_shot: Shot
) -> None:
    problems: list[str] = []

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error" or "Content Security Policy" in msg.text:
            problems.append(msg.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    await dash.login()
    rule: dict[str, Any] = {
        "sources": ["users"],
        "destinations": ["servers"],
        "protocol": "ssh",
        "ports": ["22"],
        "action": "accept",
        "authorized_groups": {"users": [USER]},
        "recording": "required",
    }
    await dash.api_write("POST", "/api/v1/policies", {"name": "recorded ssh", "rules": [rule]})
    await dash.api_write("PATCH", "/api/v1/policies/users-to-servers-ssh", {"enabled": False})
    session = await recorded_session(dash)

    await sign_in(page, dash.base, "alice")
    await page.get_by_role("link", name="Recordings").click()
    await expect(page.get_by_role("heading", name="Recordings")).to_be_visible()
    row = page.locator(f'tr[data-recording="{session}"]')
    await expect(row).to_contain_text("alice")
    await expect(row).to_contain_text(USER)
    await expect(row).to_contain_text(dash.server_name)
    await docs_shot("recordings")
    await row.get_by_role("link", name=f"Play recording {session}").click()
    await expect(page.get_by_role("heading", name=f"Recording {session}")).to_be_visible()

    player = page.locator("#player .ap-player")
    await expect(player).to_be_visible()
    terminal = page.locator("#player .ap-term")
    assert MARKER not in await terminal.inner_text()  # nothing is drawn before play
    await page.locator("#player .ap-overlay-start").click()  # the player's big play button
    await expect(terminal).to_contain_text(MARKER, timeout=20_000)
    await docs_shot("recording")

    # The audit log's session-end of this session links to the same player.
    await page.goto(f"{dash.base}/audit?kind=session-end")
    link = page.get_by_role("link", name=f"Play the recording of session {session}")
    async with asyncio.timeout(30):
        while not await link.count():
            await asyncio.sleep(0.5)
            await page.reload()
    await link.first.click()
    await expect(page).to_have_url(re.compile(f"/recordings/{session}$"))
    await expect(page.locator("#player .ap-player")).to_be_visible()
    assert problems == []
