"""Run a meshssh service as a real subprocess and wait until its ``/readyz`` is 200.

The service is told ``--ops-listen 127.0.0.1:0``; its "ops listening" log line gives the port.

Example::

    proc = await ServiceProcess.start("meshssh-relay", "--nats-url", url)
    await proc.wait_ready()
    code = await proc.stop()          # SIGTERM; returns the exit code
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

__all__ = ["ServiceProcess", "script", "terminate"]

# Matches the runner's "ops listening" line in text (url=...) and JSON ("url": "...") format.
_OPS = re.compile(r'ops listening.*?"?url"?[=:]\s*"?(http://[^\s",}]+)')


def script(name: str) -> str:
    """Path of a console script installed in the running venv."""
    return str(Path(sys.executable).parent / name)


async def terminate(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


class ServiceProcess:
    """A service subprocess with its stderr captured (and kept for failing tests)."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.ops_url = ""
        self.log: collections.deque[str] = collections.deque(maxlen=2000)
        self._found = asyncio.Event()
        assert proc.stderr is not None
        self._reader = asyncio.create_task(self._read(proc.stderr))

    @classmethod
    async def start(
        cls,
        name: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        ops_listen: str = "127.0.0.1:0",
    ) -> ServiceProcess:
        """Start console script ``name`` with ``args`` (and ``--ops-listen`` unless given)."""
        argv = [script(name), *args]
        if "--ops-listen" not in args:
            argv += ["--ops-listen", ops_listen]
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(proc, name)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self.log.append(text)
            if not self.ops_url and (m := _OPS.search(text)):
                self.ops_url = m[1]
                self._found.set()
        self._found.set()

    def output(self) -> str:
        """Everything the process wrote to stderr so far."""
        return "\n".join(self.log)

    async def wait_ops(self, timeout: float = 15.0) -> str:
        """Wait until the process has logged its ops URL (it may not be ready yet)."""
        async with asyncio.timeout(timeout):
            await self._found.wait()
        if not self.ops_url:
            raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
        return self.ops_url

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for the ops URL, then for ``/readyz`` to answer 200.

        Raises:
            TimeoutError: not ready within ``timeout`` (the log is in the message).
        """
        try:
            async with asyncio.timeout(timeout):
                await self._found.wait()
                if not self.ops_url:
                    raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
                async with httpx.AsyncClient() as client:
                    while True:
                        with contextlib.suppress(httpx.HTTPError):
                            r = await client.get(f"{self.ops_url}/readyz", timeout=1.0)
                            if r.status_code == 200:
                                return
                        await asyncio.sleep(0.05)
        except TimeoutError:
            raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.output()}") from None

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        code = await terminate(self.proc, timeout)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._reader
        return code
