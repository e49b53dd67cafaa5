"""Drive a real ``meshssh up --foreground`` agent process from tests.

The agent is a subprocess (its stderr kept for failing tests); tests talk to it the way the CLI
does, over its Unix socket with one JSON line per request (speaking the protocol directly keeps
the test kit independent of the CLI package and checks the wire format too).

Example::

    agent = await AgentProcess.start(tmp_path / "state", "--mesh-ip", "127.0.0.2",
                                      *nats_server.flags(), "--setup-key", "KEY",
                                      "--allow-server-ssh")
    status = await agent.wait_status(lambda s: s["ssh_running"])
    await agent.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshssh_common.wire.agent import SOCKET_NAME
from meshssh_testkit.process import script, terminate

__all__ = ["AgentProcess", "agent_request", "pid_alive"]

Status = dict[str, Any]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


async def agent_request(state_dir: Path, request: dict[str, Any], timeout: float = 5) -> Status:
    """Send one request to the agent of ``state_dir``; returns the decoded reply."""
    path = state_dir / SOCKET_NAME
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)  # sun_path is short: go via /proc
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}/{path.name}")
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    finally:
        os.close(fd)
    reply: Status = json.loads(line)
    return reply


class AgentProcess:
    """One ``meshssh up --foreground`` process."""

    def __init__(self, proc: asyncio.subprocess.Process, state_dir: Path) -> None:
        self.proc = proc
        self.state_dir = state_dir
        self.log: collections.deque[str] = collections.deque(maxlen=3000)
        assert proc.stderr is not None
        self._reader = asyncio.create_task(self._read(proc.stderr))

    @classmethod
    async def start(
        cls,
        state_dir: Path,
        *args: str,
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> AgentProcess:
        """Start ``[prefix...] meshssh up --foreground --state-dir <dir> args...``.

        A ``--setup-key KEY`` in ``args`` is handed over in ``MESHSSH_SETUP_KEY`` instead.
        Unless ``args`` name the OpenSSH drop-in (``--ssh-config-file``/``--disable-ssh-config``),
        the agent writes it next to the state dir (``<dir>.ssh_config``), never to /etc/ssh or
        ~/.ssh.
        """
        if not {"--ssh-config-file", "--disable-ssh-config"} & {a.split("=")[0] for a in args}:
            args = (*args, "--ssh-config-file", f"{state_dir}.ssh_config")
        env = dict(env or {})
        if "--setup-key" in args:  # as users should: in the environment, not on the command line
            i = args.index("--setup-key")
            env["MESHSSH_SETUP_KEY"] = args[i + 1]
            args = (*args[:i], *args[i + 2 :])
        argv = [
            *prefix,
            script("meshssh"),
            "up",
            "--foreground",
            "--state-dir",
            str(state_dir),
            "--heartbeat-interval",
            "0.5",
            *args,
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        return cls(proc, state_dir)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    def output(self) -> str:
        """Everything the agent (and its children) logged so far."""
        return "\n".join(self.log)

    async def status(self, detail: bool = True) -> Status:
        """The agent's status (the ``status`` object of the reply)."""
        reply = await agent_request(self.state_dir, {"op": "status", "detail": detail})
        status: Status = reply["status"]
        return status

    async def wait_status(self, predicate: Callable[[Status], bool], timeout: float = 20) -> Status:
        """Poll the status until ``predicate`` holds.

        Raises:
            AssertionError: it did not within ``timeout``, or the agent exited (with its log).
        """
        last: Status = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, ValueError, TimeoutError):
                last = await self.status()
                if predicate(last):
                    return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"status never matched; last: {last}\n{self.output()}")

    def child(self, status: Status, name: str) -> Status:
        """One child's entry of a status."""
        found: Status = next(c for c in status["children"] if c["name"] == name)
        return found

    async def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        code = await terminate(self.proc, timeout)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._reader
        return code
