"""Browser terminals through the real gateway: every component real, the browser a WebSocket.

The system (conftest ``system``): nats-server, authn, policy (its real ticket responder), a
server agent with sshd, and meshssh-gateway registered with a gateway setup key. Each test
signs in to the dashboard, posts the Connect form for a ticket, and opens the WebSocket as the
terminal page does (Origin and session cookie of the dashboard).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from meshssh_testkit.gateway_system import GatewaySystem, read_until
from meshssh_testkit.process import run_command, script
from meshssh_testkit.whole_system import audit_events

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("gateway")]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        found = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    assert found
    return int(found[1])


async def test_a_terminal_echoes_resizes_and_ends_with_the_shells_exit_status(
    system: GatewaySystem,
) -> None:
    async with system.browser("alice") as browser:
        ws = await system.open_terminal(browser, cols=100, rows=30)
        await ws.send(b"echo ws-ok\n")
        _, last = await read_until(ws, re.compile(rb"[\r\n]ws-ok\r\n"))
        assert last is None
        await ws.send(b"stty size\n")
        await read_until(ws, b"30 100")
        await ws.send(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
        await ws.send(b"stty size\n")
        await read_until(ws, b"43 132")
        await ws.send(b"exit 3\n")
        _, last = await read_until(ws, b"\x00never")
        assert last == {"type": "exit", "status": 3, "message": ""}
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert ws.close_code == 1000

    page = await system.gateway_metrics()
    assert metric(page, "meshssh_gateway_sessions_total", result="exited") >= 1
    assert metric(page, "meshssh_gateway_bytes_total", direction="in") >= len(b"echo ws-ok\n")
    assert metric(page, "meshssh_gateway_sessions_open") == 0
    nc = await system.nats_server.connect("admin")
    try:
        events = await audit_events(nc, wait_for="browser-session-end")
    finally:
        await nc.close()
    start = next(e for e in events if e.kind == "browser-session-start")
    end = next(e for e in events if e.kind == "browser-session-end")
    assert (start.jwt_user, start.target_peer, start.browser_addr) == (
        "alice",
        system.server_id,
        "127.0.0.1",
    )
    assert end.result == "exited"
    assert end.reason == "exit 3"
    assert end.bytes_in > 0
    assert end.bytes_out > 0
    # the target's sshd audited the same login, from the gateway as the source peer
    login = next(e for e in events if e.kind == "auth-accepted" and e.jwt_user == "alice")
    assert login.source_addr.startswith(f"{system.net}.5:")
    assert login.source_peer == start.peer_id


async def test_foreign_origins_and_missing_invalid_reused_or_borrowed_tickets_are_refused(
    system: GatewaySystem,
) -> None:
    async with system.browser("alice") as alice, system.browser("bob") as bob:
        ticket = await system.ticket(alice)
        for kwargs in ({"origin": "http://evil.example"}, {"no_origin": True}, {"ticket": ""}):
            with pytest.raises(InvalidStatus) as refused:
                await system.open_terminal(alice, **({"ticket": ticket} | kwargs))  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403
        # refusals before the upgrade leave the ticket unused: it still opens a terminal
        ws = await system.open_terminal(alice, ticket=ticket)
        await ws.send(b"echo once-$((6*7))\n")
        await read_until(ws, b"once-42")
        await ws.close()
        # used up, never issued, or presented with another sign-in's cookie
        other = await system.ticket(alice)
        for who, presented, text in (
            (alice, ticket, "already used"),
            (alice, secrets.token_urlsafe(32), "already used"),
            (bob, other, "another dashboard sign-in"),
        ):
            ws = await system.open_terminal(who, ticket=presented)
            _, last = await read_until(ws, b"\x00never")
            assert last is not None
            assert last["type"] == "error"
            assert text in last["message"]
            async with asyncio.timeout(10):
                await ws.wait_closed()
            assert ws.close_code == 1008
    page = await system.gateway_metrics()
    assert metric(page, "meshssh_gateway_refusals_total", reason="origin") >= 2
    assert metric(page, "meshssh_gateway_refusals_total", reason="no_ticket") >= 1
    assert metric(page, "meshssh_gateway_refusals_total", reason="ticket") >= 3


async def test_an_idle_terminal_is_closed_after_the_idle_timeout(system: GatewaySystem) -> None:
    # 4 s, not less: a loaded CI machine can stall the first echo for over a second, and a
    # terminal that idled out before it would fail the test for the wrong reason
    gateway, url = await system.start_gateway("idle-gw", 6, "--idle-timeout", "4")
    async with system.browser("alice") as browser:
        ws = await system.open_terminal(browser, ws_base=url)
        await ws.send(b"echo busy\n")
        await read_until(ws, re.compile(rb"[\r\n]busy\r\n"))
        started = asyncio.get_running_loop().time()
        _, last = await read_until(ws, b"\x00never", timeout=20)
        waited = asyncio.get_running_loop().time() - started
    assert last is not None
    assert last["type"] == "error"
    assert "idle timeout" in last["message"]
    assert 3.5 <= waited < 15
    page = await system.gateway_metrics(gateway)
    assert metric(page, "meshssh_gateway_sessions_total", result="idle") == 1


async def test_a_user_gets_at_most_max_sessions_per_user_terminals_at_once(
    system: GatewaySystem,
) -> None:
    gateway, url = await system.start_gateway("limit-gw", 7, "--max-sessions-per-user", "2")
    async with system.browser("alice") as browser:
        first = await system.open_terminal(browser, ws_base=url)
        second = await system.open_terminal(browser, ws_base=url)
        for ws in (first, second):
            await ws.send(b"echo open-$((1+1))\n")
            await read_until(ws, b"open-2")
        third = await system.open_terminal(browser, ws_base=url)
        _, last = await read_until(third, b"\x00never")
        assert last is not None
        assert "2 terminals open" in last["message"]
        await first.send(b"exit\n")
        await read_until(first, b"\x00never")
        fourth = await system.open_terminal(browser, ws_base=url)
        await fourth.send(b"echo again-$((2+2))\n")
        await read_until(fourth, b"again-4")
        for ws in (second, fourth):
            await ws.close()
    page = await system.gateway_metrics(gateway)
    assert metric(page, "meshssh_gateway_refusals_total", reason="limit_user") == 1


async def test_a_slow_browser_pauses_the_ssh_channel_and_the_gateway_memory_stays_bounded(
    system: GatewaySystem,
) -> None:
    assert system.gateway is not None
    pid = system.gateway.proc.pid
    async with system.browser("alice") as browser:
        # the client stops reading once 2 frames wait: the gateway must hold the shell back
        ws = await system.open_terminal(browser, max_queue=2)
        await ws.send(b"echo go-$((3*3))\n")
        await read_until(ws, b"go-9")
        before = rss_kib(pid)
        await ws.send(
            b"yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvw\n"
        )
        peak = before
        async with asyncio.timeout(30):
            while (
                metric(await system.gateway_metrics(), "meshssh_gateway_backpressure_pauses_total")
                < 1
            ):
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.1)
        out_then = metric(
            await system.gateway_metrics(), "meshssh_gateway_bytes_total", direction="out"
        )
        for _ in range(20):  # two seconds of a shell that could write hundreds of MB
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.1)
        out_now = metric(
            await system.gateway_metrics(), "meshssh_gateway_bytes_total", direction="out"
        )
        # paused: at most one SSH window and the pause threshold more came through
        assert out_now - out_then < 4 * 1024 * 1024, (out_then, out_now)
        assert peak - before < 24 * 1024, (before, peak)
        await ws.send(b"\x03")  # Ctrl-C: yes stops; reading again drains everything queued
        await ws.send(b"echo done-$((5*5))\n")
        await read_until(ws, b"done-25", timeout=60)
        await ws.close()
    if os.environ.get("CI"):
        print(f"gateway RSS {before} KiB -> peak {peak} KiB under a slow reader")


async def test_a_stopping_gateway_tells_its_open_terminals_and_exits_cleanly(
    system: GatewaySystem,
) -> None:
    gateway, url = await system.start_gateway("stop-gw", 8)
    async with system.browser("alice") as browser:
        ws = await system.open_terminal(browser, ws_base=url)
        await ws.send(b"echo up-$((5+5))\n")
        await read_until(ws, b"up-10")
        stopping = asyncio.create_task(gateway.stop())
        _, last = await read_until(ws, b"\x00never", timeout=20)
        assert await stopping == 0
    assert last is not None
    assert last["type"] == "error"
    assert "shutting down" in last["message"]


async def test_a_gateway_whose_setup_key_is_refused_exits_1_and_says_why(
    system: GatewaySystem, tmp_path: Path
) -> None:
    result = await run_command(
        script("meshssh-gateway"),
        *("--nats-url", system.nats_server.url, "--management-url", system.base),
        *("--mesh-ip", f"{system.net}.9", "--state-dir", str(tmp_path / "gw")),
        env={"MESHSSH_SETUP_KEY": "not-a-setup-key-of-this-mesh"},
        timeout=60,
    )
    assert result.returncode == 1, result.err
    assert "registration refused" in result.err


async def test_removing_the_policy_closes_the_open_terminal_with_access_revoked(
    system: GatewaySystem,
) -> None:
    policy = "users-to-servers-ssh"
    async with system.browser("alice") as browser:
        ws = await system.open_terminal(browser)
        await ws.send(b"echo live-$((4*4))\n")
        await read_until(ws, b"live-16")
        await system.api("PATCH", f"/api/v1/policies/{policy}", {"enabled": False})
        try:
            out, last = await read_until(ws, b"\x00never", timeout=30)
        finally:
            await system.api("PATCH", f"/api/v1/policies/{policy}", {"enabled": True})
    assert last == {"type": "error", "message": "access revoked"}
    assert b"access revoked" in out
    page = await system.gateway_metrics()
    assert metric(page, "meshssh_gateway_sessions_total", result="revoked") == 1
