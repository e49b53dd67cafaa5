"""A real OpenSSH ``ssh-agent`` holding one key, for agent-forwarding tests (``ssh -A``).

The agent runs in the foreground (``ssh-agent -D -a SOCKET``) as a child of the test, listens
on a socket under the test's directory, gets the key with ``ssh-add``, and is stopped (SIGTERM,
then SIGKILL) when the context ends.

Example::

    async with ssh_agent(tmp_path / "agent", openssh.key_path) as agent:
        env = {"SSH_AUTH_SOCK": agent.socket}
        agent.fingerprint        # "SHA256:..." as ``ssh-add -l`` prints it
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from meshssh_testkit.process import run_command, terminate

__all__ = ["SshAgent", "ssh_agent", "ssh_agent_available"]


def ssh_agent_available() -> bool:
    """True when ``ssh-agent`` and ``ssh-add`` are on PATH."""
    return bool(shutil.which("ssh-agent") and shutil.which("ssh-add"))


@dataclass(frozen=True)
class SshAgent:
    """A running agent: its socket and the fingerprint of the key it holds."""

    socket: str
    fingerprint: str


async def _run(*argv: str, env: dict[str, str]) -> str:
    return (await run_command(*argv, env=env, timeout=15, check=True)).out


@contextlib.asynccontextmanager
async def ssh_agent(directory: Path, key_path: Path) -> AsyncIterator[SshAgent]:
    """Run ``ssh-agent`` with the key at ``key_path`` loaded; stop it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    socket = str(directory / "agent.sock")
    proc = await asyncio.create_subprocess_exec(
        "ssh-agent",
        "-D",
        "-a",
        socket,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(10):
            while not os.path.exists(socket):
                if proc.returncode is not None:
                    raise RuntimeError(f"ssh-agent exited with {proc.returncode}")
                await asyncio.sleep(0.02)
        env = {"SSH_AUTH_SOCK": socket}
        await _run("ssh-add", "-q", str(key_path), env=env)
        listed = await _run("ssh-add", "-l", env=env)
        yield SshAgent(socket, listed.split()[1])
    finally:
        await terminate(proc, timeout=5.0)
