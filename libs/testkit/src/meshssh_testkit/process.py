"""Subprocesses in tests: one command run to its end, or a meshssh service kept running.

:func:`run_command` (and :func:`run_command_sync` for plain test functions) runs one command
with a timeout and returns a :class:`RunResult`; ``check=True`` (or :meth:`RunResult.check`)
fails with the command, its exit code and its output in the message. On a timeout the command
is killed and a :class:`CommandTimeout` names it.

:class:`ServiceProcess` runs a service told ``--ops-listen 127.0.0.1:0``; its "ops listening"
log line gives the port.

Example::

    result = await run_command("meshctl", "--json", "peers", env=env, check=True)
    proc = await ServiceProcess.start("meshssh-relay", *nats_server.flags())
    await proc.wait_ready()
    code = await proc.stop()          # SIGTERM; returns the exit code
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "CommandFailed",
    "CommandTimeout",
    "RunResult",
    "ServiceProcess",
    "run_command",
    "run_command_sync",
    "script",
    "terminate",
]

# Matches the runner's "ops listening" line in text (url=...) and JSON ("url": "...") format.
_OPS = re.compile(r'ops listening.*?"?url"?[=:]\s*"?(http://[^\s",}]+)')


class CommandFailed(AssertionError):
    """A command run with ``check`` exited with a code it was not expected to."""


class CommandTimeout(TimeoutError):
    """A command did not finish within its timeout (it was killed)."""


@dataclass(frozen=True)
class RunResult:
    """What one command run returned."""

    returncode: int
    stdout: bytes
    stderr: bytes
    argv: tuple[str, ...] = ()

    @property
    def out(self) -> str:
        """Stdout as text."""
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        """Stderr as text."""
        return self.stderr.decode(errors="replace")

    def describe(self) -> str:
        """The command, its exit code and the tail of its output (for failure messages)."""
        lines = [f"`{shlex.join(self.argv)}` exited {self.returncode}"]
        for name, text in (("stdout", self.out), ("stderr", self.err)):
            if text.strip():
                lines.append(f"--- {name}:\n{text[-4000:].rstrip()}")
        return "\n".join(lines)

    def check(self, *codes: int) -> RunResult:
        """Self when the exit code is one of ``codes`` (default 0); else :class:`CommandFailed`."""
        if self.returncode not in (codes or (0,)):
            raise CommandFailed(self.describe())
        return self


def _env(env: Mapping[str, str] | None, replace_env: bool) -> dict[str, str] | None:
    if env is None:
        return None
    return dict(env) if replace_env else {**os.environ, **env}


def _input(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


async def run_command(
    *argv: str,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
    cwd: Path | str | None = None,
    timeout: float = 60.0,
    check: bool = False,
    **kw: object,
) -> RunResult:
    """Run ``argv`` to its end (stdin is ``input`` or /dev/null) and capture its output.

    ``env`` is added to this process's environment (``replace_env``: used alone); ``kw`` goes
    to :func:`asyncio.create_subprocess_exec` (``user``, ``group``, ...).

    Raises:
        CommandTimeout: it ran longer than ``timeout`` (it is killed first).
        CommandFailed: ``check`` and it exited non-zero.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(env, replace_env),
        cwd=cwd,
        **kw,  # type: ignore[arg-type]
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(_input(input))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandTimeout(f"`{shlex.join(argv)}` did not finish in {timeout}s") from None
    assert proc.returncode is not None
    result = RunResult(proc.returncode, out, err, tuple(argv))
    return result.check() if check else result


def run_command_sync(
    *argv: str,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
    cwd: Path | str | None = None,
    timeout: float = 60.0,
    check: bool = False,
) -> RunResult:
    """:func:`run_command` for code without an event loop (same arguments and errors)."""
    try:
        done = subprocess.run(
            list(argv),
            input=_input(input),
            capture_output=True,
            env=_env(env, replace_env),
            cwd=cwd,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL if input is None else None,
        )
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"`{shlex.join(argv)}` did not finish in {timeout}s") from None
    result = RunResult(done.returncode, done.stdout, done.stderr, tuple(argv))
    return result.check() if check else result


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
