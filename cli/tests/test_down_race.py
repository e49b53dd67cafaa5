"""``meshssh down`` returns only once the agent and its children have exited, on a busy machine.

A CPU busy loop loads one core while ``meshssh up`` (daemonized; with sshd and the relay
every fourth round, as they take longest to start) and ``meshssh down`` run 20 times in a row
on that same core (the loop, ``meshssh`` and the agent with its children are all pinned to
it: as busy as two loops made both cores of a two-core machine, while tests running in
parallel keep the other cores): every time ``down`` returns,
the agent and every child it reported must be gone, and the state dir free for the next
``up``. Before the fix ``down`` waited only for the agent's lock, which the agent dropped
before its interpreter had finished exiting (an agent made to linger 0.3 s after that failed
this test in the first round). A child that does not
stop makes ``down`` fail after ``--timeout`` with what still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_agent.state_dir import lock_holder
from meshssh_testkit.management import SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess, agent_request, pid_alive
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import run_command, script, terminate

ROUNDS = 20
CHILDREN_EVERY = 4  # rounds with sshd and the relay (slower to start): 0, 4, 8, ...


@pytest.fixture
async def policy(
    services: ServiceFactory, nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> Management:
    return await Management.start(services, nats_server, nc, tmp_path / "policy")


def busy_core() -> int:
    """The core the load test uses: the last one this process may run on."""
    return max(os.sched_getaffinity(0))


def on_busy_core() -> None:
    os.sched_setaffinity(0, {busy_core()})  # runs in the child before exec; inherited from there


@pytest.fixture
async def busy_machine() -> AsyncIterator[None]:
    """A process that spins on the busy core for as long as the test runs."""
    loops = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", "while True: pass", preexec_fn=on_busy_core
        )
        for _ in range(1)
    ]
    try:
        yield
    finally:
        for proc in loops:
            await terminate(proc, 5)


async def meshssh(*args: str) -> tuple[int, str]:
    """``meshssh args`` on the busy core (a daemonized agent and its children stay there)."""
    result = await run_command(script("meshssh"), *args, timeout=90, preexec_fn=on_busy_core)
    return result.returncode, result.out + result.err


@pytest.mark.timeout(600)
async def test_down_returns_only_after_the_agent_and_its_children_exit_under_load(
    tmp_path: Path, nats_url: str, policy: Management, busy_machine: None
) -> None:
    state = tmp_path / "state"
    up = [
        "up",
        "--state-dir",
        str(state),
        "--mesh-ip",
        "127.0.0.2",
        "--name",
        "server",
        "--nats-url",
        nats_url,
        "--management-url",
        policy.api,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--ssh-config-file",
        f"{state}.ssh_config",
        "--setup-key",
        SERVER_KEY,
    ]
    try:
        for round_ in range(ROUNDS):
            children = ["--allow-server-ssh"] if round_ % CHILDREN_EVERY == 0 else []
            code, out = await meshssh(*up, *children)
            assert code == 0, f"round {round_}: up failed:\n{out}"
            status = (await agent_request(state, {"op": "status"}))["status"]
            pids = {"agent": status["pid"]}
            pids |= {c["name"]: c["pid"] for c in status["children"] if c["pid"]}
            if children:
                assert set(pids) == {"agent", "sshd", "relay"}, status["children"]
            code, out = await meshssh("down", "--state-dir", str(state))
            assert code == 0, f"round {round_}: down failed:\n{out}"
            alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
            assert not alive, f"round {round_}: still running after down returned: {alive}"
            assert lock_holder(state / "agent.lock") is None
    finally:
        await meshssh("down", "--state-dir", str(state))


async def test_down_fails_after_its_timeout_naming_what_still_runs(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    # Stands in for a child that hangs on shutdown: it ignores SIGTERM, and the agent is told
    # to wait 30 s before it SIGKILLs (so `down --timeout 2` sees it still running).
    stuck = tmp_path / "stuck-child"
    stuck.write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 120\n")
    stuck.chmod(0o755)
    state = tmp_path / "state"
    agent = await AgentProcess.start(
        state,
        "--mesh-ip",
        "127.0.0.2",
        "--name",
        "server",
        "--nats-url",
        nats_url,
        "--management-url",
        policy.api,
        "--setup-key",
        SERVER_KEY,
        "--allow-server-ssh",
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--sshd-bin",
        str(stuck),
        "--relay-bin",
        str(stuck),
        "--child-stop-timeout",
        "30",
    )
    children: list[int] = []
    try:
        status = await agent.wait_status(lambda s: all(c["pid"] for c in s["children"]))
        children = [c["pid"] for c in status["children"]]
        sshd = agent.child(status, "sshd")["pid"]
        code, out = await meshssh("down", "--state-dir", str(state), "--timeout", "2")
        assert code == 1, out
        assert "did not stop within 2s" in out
        assert f"sshd (pid {sshd})" in out
        assert f"agent (pid {status['pid']})" in out
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await agent.stop()
