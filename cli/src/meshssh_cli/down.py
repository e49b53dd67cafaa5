"""``meshssh down``: stop the agent of a state dir and wait until it (and its children) are gone.

The agent answers the request, stops sshd and the relay, and exits; the kernel then drops the
agent's lock on ``<state-dir>/agent.lock``, which is what this command waits for. When no
agent runs, it says so and exits 0 (``down`` is idempotent).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from meshssh_cli.agent_client import AgentClient, NotRunning
from meshssh_cli.agent_config import default_state_dir
from meshssh_cli.agent_state import lock_holder
from meshssh_common.errors import MeshError

__all__ = ["down", "register", "run"]


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
    p.set_defaults(run=run)  # fmt: skip


async def down(state_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop the agent of ``state_dir``; returns False when none was running.

    Raises:
        MeshError: the agent refused (another user's agent) or did not stop in ``timeout``.
    """
    lock = state_dir / "agent.lock"
    try:
        async with AgentClient.connect(state_dir) as agent:
            await agent.down()
    except NotRunning:
        if lock_holder(lock) is None:
            return False
        raise
    deadline = time.monotonic() + timeout
    while lock_holder(lock) is not None:
        if time.monotonic() > deadline:
            raise MeshError(f"the agent did not stop within {timeout:.0f}s")
        await asyncio.sleep(0.05)
    return True


def run(args: argparse.Namespace) -> int:
    """``meshssh down``; returns the exit code."""
    state_dir = (args.state_dir or default_state_dir()).absolute()
    try:
        stopped = asyncio.run(down(state_dir, timeout=args.timeout))
    except MeshError as e:
        sys.stderr.write(f"meshssh down: {e.public}\n")
        return 1
    sys.stderr.write("meshssh: agent stopped\n" if stopped else
                     f"meshssh: no agent was running for {state_dir}\n")  # fmt: skip
    return 0
