"""What does a terminal in the browser cost, compared with SSH straight to the same sshd?

Issue 20's figures: the keystroke echo round trip through the browser path (a WebSocket to
meshssh-gateway, which bridges it to the target's sshd over SSH; goal: p50 at most 20 ms on
loopback), and the gateway's memory per open terminal.

Everything real, on loopback (:mod:`meshssh_testkit.gateway_system`): nats-server, authn,
policy, a server agent with sshd, and meshssh-gateway. The browser is a WebSocket client that
signs in to the dashboard, posts the Connect form and opens the terminal as the page does.

- A (gateway): one keystroke (``x``) sent as a binary frame; the time until the frame with its
  echo (the PTY's, through the shell's line editor) arrives.
- B (direct): the same keystroke on an asyncssh PTY session straight to the same sshd, from
  the gateway's mesh address, logged in with a per-peer token of the same user (the bench
  redeems one ticket itself with the admin identity, exactly as the gateway would, for the
  user's IdP token, and has authn exchange it).

Runs alternate A and B (``BENCH_ROUNDS``, default 7), each ``BENCH_KEYS`` keystrokes (default
60) after a warm-up; each figure is the median over runs of the run's p50 or p95, min and max
shown; ratios are gateway/direct, the median of the ratios of adjacent A/B runs (1.0 = as
fast, higher = slower).

Memory: the gateway's RSS (``/proc/<pid>/status``) before and after opening ``BENCH_TERMINALS``
terminals (default 20; each shows its prompt), divided by their number; and the same while
every one of them runs ``yes`` with a browser that does not read (back-pressure must hold it).

Run: ``.venv/bin/python bench/browser_terminal.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh

from meshssh_common import codec, subjects
from meshssh_common.wire import RemotePeer, TicketGrant, TicketRedeem
from meshssh_common.wire.authn import TokenExchangeReply, TokenExchangeRequest
from meshssh_gateway.ssh_target import dial_target
from meshssh_testkit.gateway_system import Browser, GatewaySystem, gateway_system, read_until
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
KEYS = int(os.environ.get("BENCH_KEYS", "60"))
TERMINALS = int(os.environ.get("BENCH_TERMINALS", "20"))
NET = "127.0.231"
CLEAR = b"\x15"  # Ctrl-U: the typed x's go, the line is empty again


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert found
    return int(found[1])


class DirectShell(asyncssh.SSHClientSession[bytes]):
    """A PTY shell session whose output wakes a waiter."""

    def __init__(self) -> None:
        self.out = b""
        self.more = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.out += data
        self.more.set()

    async def until(self, wanted: bytes, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while wanted not in self.out:
                self.more.clear()
                await self.more.wait()


async def gateway_echoes(ws: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await ws.send(b"x")
        while b"x" not in await ws.recv():
            pass
        times.append((time.perf_counter() - start) * 1000)
    await ws.send(CLEAR)
    await asyncio.sleep(0.05)
    return times


async def direct_echoes(
    chan: asyncssh.SSHClientChannel[bytes], shell: DirectShell, n: int
) -> list[float]:
    times = []
    for _ in range(n):
        shell.out = b""
        start = time.perf_counter()
        chan.write(b"x")
        await shell.until(b"x")
        times.append((time.perf_counter() - start) * 1000)
    chan.write(CLEAR)
    await asyncio.sleep(0.05)
    return times


async def direct_session(
    system: GatewaySystem, browser: Browser
) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientChannel[bytes], DirectShell]:
    """B: redeem a ticket as the gateway would, exchange its token, log in to sshd directly."""
    assert system.gateway is not None
    peers = await system.api("GET", "/api/v1/peers")
    gateway = next(p for p in peers if p["name"].endswith("-gw") and p["mesh_ip"].endswith(".5"))
    server = await system.api("GET", f"/api/v1/peers/{system.server_id}")
    ticket = await system.ticket(browser)
    nc = await system.nats_server.connect("admin")
    try:
        ask = TicketRedeem(ticket=ticket, session=browser.cookie, browser_addr="127.0.0.1")
        msg = await nc.request(subjects.gateway_ticket(gateway["id"]), codec.encode(ask), 5)
        grant = codec.decode(msg.data, TicketGrant)
        swap = TokenExchangeRequest(subject_token=grant.idp_token, target_peer=grant.peer_id)
        msg = await nc.request(subjects.token_exchange(gateway["id"]), codec.encode(swap), 5)
        token = codec.decode(msg.data, TokenExchangeReply).access_token
    finally:
        await nc.close()
    remote = RemotePeer(
        id=grant.peer_id,
        name=grant.peer_name,
        mesh_ip=grant.mesh_ip,
        ssh_host_key=server["ssh_host_key"],
        ssh_port=grant.ssh_port,
    )
    conn, _ = await dial_target(
        remote, grant.ssh_port, grant.local_user, token, source=gateway["mesh_ip"], timeout=15
    )
    shell = DirectShell()
    chan, _ = await conn.create_session(
        lambda: shell, term_type="xterm-256color", term_size=(80, 24), encoding=None
    )
    return conn, chan, shell


async def prompt(ws: Any) -> None:
    """Wait for the shell to be ready (an echoed marker)."""
    await ws.send(b"echo ready-$((20+3))\n")
    await read_until(ws, b"ready-23")


async def memory(system: GatewaySystem, browser: Browser) -> dict[str, float]:
    """KiB of gateway RSS per open terminal: idle, then each streaming to a stalled browser."""
    assert system.gateway is not None
    pid = system.gateway.proc.pid
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    sockets = []
    for _ in range(TERMINALS):
        ws = await system.open_terminal(browser, max_queue=2)
        await prompt(ws)
        sockets.append(ws)
    await asyncio.sleep(0.5)
    idle = rss_kib(pid)
    for ws in sockets:  # every browser stops reading; every shell writes as fast as it can
        await ws.send(b"yes 0123456789abcdefghijklmnopqrstuvwxyz\n")
    await asyncio.sleep(3)
    busy = rss_kib(pid)
    for _ in range(10):
        busy = max(busy, rss_kib(pid))
        await asyncio.sleep(0.2)
    for ws in sockets:
        await ws.close()
    return {
        "rss_before_kib": before,
        "rss_idle_kib": idle,
        "rss_stalled_kib": busy,
        "kib_per_terminal": (idle - before) / TERMINALS,
        "kib_per_stalled_terminal": (busy - before) / TERMINALS,
    }


async def bench() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        nats_server = await NatsServer.start(Path(tmp) / "nats")
        factory = ServiceFactory()
        try:
            flags = ("--enable-ssh-root",) if os.geteuid() == 0 else ()
            async with (
                gateway_system(
                    nats_server,
                    factory,
                    Path(tmp),
                    net=NET,
                    server_flags=flags,
                    gateway_flags=("--max-sessions-per-user", str(TERMINALS + 5)),
                ) as system,
                system.browser("alice") as browser,
            ):
                return await measure(system, browser)
        finally:
            for proc in reversed(factory.started):
                await proc.stop()
            await nats_server.stop()


async def measure(system: GatewaySystem, browser: Browser) -> dict[str, Any]:
    ws = await system.open_terminal(browser)
    await prompt(ws)
    conn, chan, shell = await direct_session(system, browser)
    chan.write(b"echo ready-$((20+3))\n")
    await shell.until(b"ready-23")
    await gateway_echoes(ws, 20)  # warm-up
    await direct_echoes(chan, shell, 20)
    runs: dict[str, list[list[float]]] = {"gateway": [], "direct": []}
    for i in range(ROUNDS):
        order = ("gateway", "direct") if i % 2 == 0 else ("direct", "gateway")
        for path in order:
            if path == "gateway":
                runs[path].append(await gateway_echoes(ws, KEYS))
            else:
                runs[path].append(await direct_echoes(chan, shell, KEYS))
    await ws.close()
    chan.close()
    conn.close()
    with contextlib.suppress(Exception):
        await conn.wait_closed()
    mem = await memory(system, browser)
    figures: dict[str, Any] = {}
    for q in (50, 95):
        per_run = {p: [pct(r, q) for r in rs] for p, rs in runs.items()}
        ratios = [g / d for g, d in zip(per_run["gateway"], per_run["direct"], strict=True)]
        for path, values in per_run.items():
            figures[f"echo_p{q}_ms_{path}"] = statistics.median(values)
            figures[f"echo_p{q}_ms_{path}_min"] = min(values)
            figures[f"echo_p{q}_ms_{path}_max"] = max(values)
        figures[f"echo_p{q}_ratio"] = statistics.median(ratios)
        figures[f"echo_p{q}_ratio_min"] = min(ratios)
        figures[f"echo_p{q}_ratio_max"] = max(ratios)
    return figures | mem


def main() -> int:
    figures = asyncio.run(bench())
    print(f"browser terminal: {ROUNDS} runs of {KEYS} keystrokes per path, alternating")
    print(f"{'figure':<28}{'median':>10}{'min':>10}{'max':>10}")
    for q in (50, 95):
        for path in ("gateway", "direct"):
            key = f"echo_p{q}_ms_{path}"
            print(
                f"{f'echo p{q} ms, {path}':<28}{figures[key]:>10.2f}"
                f"{figures[key + '_min']:>10.2f}{figures[key + '_max']:>10.2f}"
            )
        key = f"echo_p{q}_ratio"
        print(
            f"{f'echo p{q} gateway/direct':<28}{figures[key]:>10.2f}"
            f"{figures[key + '_min']:>10.2f}{figures[key + '_max']:>10.2f}"
        )
    print(
        f"gateway RSS {figures['rss_before_kib']} KiB; with {TERMINALS} open terminals "
        f"{figures['rss_idle_kib']} KiB ({figures['kib_per_terminal']:.0f} KiB each); all "
        f"streaming to stalled browsers {figures['rss_stalled_kib']} KiB "
        f"({figures['kib_per_stalled_terminal']:.0f} KiB each)"
    )
    goal = "met" if figures["echo_p50_ms_gateway"] <= 20 else "NOT met"
    print(f"goal p50 <= 20 ms through the gateway: {goal}")
    result = {
        "bench": "browser_terminal",
        "echo_p50_ms": round(figures["echo_p50_ms_gateway"], 3),
        "echo_p95_ms": round(figures["echo_p95_ms_gateway"], 3),
        "echo_p50_ms_direct": round(figures["echo_p50_ms_direct"], 3),
        "echo_p95_ms_direct": round(figures["echo_p95_ms_direct"], 3),
        "echo_p50_ratio": round(figures["echo_p50_ratio"], 3),
        "echo_p95_ratio": round(figures["echo_p95_ratio"], 3),
        "kib_per_terminal": round(figures["kib_per_terminal"], 1),
        "kib_per_stalled_terminal": round(figures["kib_per_stalled_terminal"], 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
