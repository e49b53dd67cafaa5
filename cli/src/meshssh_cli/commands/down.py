"""``meshssh down``: stop the agent of a state dir and wait until it and its children are gone.

Order: ask the agent for its pid and its children's (sshd, relay), send ``down``, then wait
until every one of those processes has exited (a zombie counts as exited; a pid now used by
another process, told apart by its start time, too) and the agent's lock on
``<state-dir>/agent.lock`` is free. Waiting for the lock alone was not enough: the lock goes
when the agent closes its files, and its children may still be stopping. After ``--timeout``
seconds it fails and names what still runs. When no agent runs, it says so and exits 0
(``down`` is idempotent).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from meshssh_agent.state_dir import StateDir, default_state_dir, lock_holder
from meshssh_cli.link.client import AgentClient, NotRunning
from meshssh_common.errors import MeshError, Unavailable

__all__ = ["StillRunning", "down", "process_start", "register", "run"]

_POLL = 0.02  # seconds between checks: `down` is often followed at once by `up`


class StillRunning(Unavailable):
    """The agent (or a child of it) did not exit in time."""

    def __init__(self, state_dir: Path, timeout: float, left: list[str]) -> None:
        super().__init__(
            f"the agent for {state_dir} did not stop within {timeout:g}s; still running: "
            f"{', '.join(left)}. Its log: {StateDir(state_dir).log}; `kill <pid>` stops a "
            "process, and `meshssh down` again waits for it"
        )
        self.left = left


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``down`` to the ``meshssh`` parser."""
    p = subparsers.add_parser(
        "down",
        help="stop this peer's agent",
        description="Stop this peer's agent and wait until it and its children are gone.",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"the agent's state dir (default: {default_state_dir()})",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to stop")
    p.set_defaults(run=run)


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


async def down(state_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop the agent of ``state_dir``; returns False when none was running.

    Raises:
        MeshError: the agent refused (another user's agent).
        StillRunning: it or one of its children had not exited after ``timeout`` seconds.
    """
    lock = StateDir(state_dir).lock
    try:
        async with AgentClient.connect(state_dir) as agent:
            status = await agent.status()
            named = [("agent", status.pid), *((c.name, c.pid) for c in status.children)]
            watched = {
                f"{name} (pid {pid})": (pid, start)
                for name, pid in named
                if pid and (start := process_start(pid)) is not None
            }
            await agent.down()
    except NotRunning:
        if lock_holder(lock) is None:
            return False
        raise
    deadline = time.monotonic() + timeout
    while True:
        left = [name for name, (pid, start) in watched.items() if process_start(pid) == start]
        if lock_holder(lock) is not None:
            left.append(f"the holder of {lock}")
        if not left:
            return True
        if time.monotonic() > deadline:
            raise StillRunning(state_dir, timeout, left)
        await asyncio.sleep(_POLL)


def run(args: argparse.Namespace) -> int:
    """``meshssh down``; returns the exit code."""
    state_dir = (args.state_dir or default_state_dir()).absolute()
    try:
        stopped = asyncio.run(down(state_dir, timeout=args.timeout))
    except MeshError as e:
        sys.stderr.write(f"meshssh down: {e.public}\n")
        return 1
    sys.stderr.write(
        "meshssh: agent stopped\n"
        if stopped
        else f"meshssh: no agent was running for {state_dir}\n"
    )
    return 0
