"""Supervised child processes: started and stopped on demand, restarted with backoff.

A :class:`Child` runs one service executable (meshssh-sshd or meshssh-relay). The agent says
whether it should run (:meth:`Child.want`) or be restarted with fresh arguments
(:meth:`Child.restart`); :meth:`Child.run` does the rest until :meth:`Child.shutdown`.

No child outlives the agent:
- each child gets ``PR_SET_PDEATHSIG`` = SIGTERM (Linux), so even a SIGKILLed agent takes its
  children down, and they still get to clean up (the relay removes its nftables rule);
- each child leads its own process group; stopping sends SIGTERM, waits ``stop_timeout``, then
  SIGKILLs the whole group, and ``on_killed`` runs (the relay's rule cleanup);
- a supervisor that is cancelled still stops its child that way before it returns, so the
  agent never exits ahead of its children (``meshssh down`` waits for all of them).

States: ``stopped`` → ``starting`` (spawned, /readyz not yet seen) → ``running`` → on an
unexpected exit ``backoff`` (0.25 s doubling to 15 s; reset after 10 s of healthy running)
→ ``starting``...; ``stopping`` while being stopped.

Example::

    sshd = Child("sshd", lambda: ["meshssh-sshd", ...], log=log)
    tg.create_task(sshd.run())
    sshd.want(True)
    ...
    await sshd.shutdown()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from meshssh_common.logs import BoundLogger
from meshssh_common.wire.agent import ChildStatus

__all__ = ["Child"]

_PR_SET_PDEATHSIG = 1
_OPS = re.compile(r'ops listening.*?"?url"?[=:]\s*"?(http://[^\s",}]+)')
_BACKOFF_FIRST, _BACKOFF_MAX, _HEALTHY_AFTER = 0.25, 15.0, 10.0
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the agent died before prctl took effect
            os._exit(1)

    return preexec


class Child:
    """One supervised service process (see the module docstring).

    Args:
        name: ``sshd`` or ``relay``: log field and status name.
        argv: builds the command line at each start (it may change between starts).
        log: the agent's logger.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        on_killed: awaited after the child had to be SIGKILLed.
        on_change: called after every state change (the agent republishes its heartbeat).
        on_restart: called with the name at each restart after an unexpected exit (a metric).
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[], list[str]],
        *,
        log: BoundLogger,
        stop_timeout: float = 1.5,
        on_killed: Callable[[], Awaitable[None]] | None = None,
        on_change: Callable[[], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log.bind(child=name)
        self.stop_timeout = stop_timeout
        self.on_killed = on_killed
        self.on_change = on_change
        self.on_restart = on_restart
        self.state = "stopped"
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.ops_url = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._cause = ""  # the first error line of the latest run that logged one
        self._run_errored = False
        self.desired = False
        self._restart = False
        self._closing = False
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._finished = asyncio.Event()

    @property
    def last_error(self) -> str:
        """Why the child last failed (for ``status``).

        The first line that looks like an error in the latest run that wrote one: what a
        failing service logs while it shuts down (e.g. uvicorn giving up on a connection)
        comes after the cause.
        """
        return self._cause

    def _note(self, line: str) -> None:
        self.tail.append(line)
        if not self._run_errored and (
            "bad setting" in line or " error " in line or "Traceback" in line
        ):
            self._cause, self._run_errored = line, True

    @property
    def up(self) -> bool:
        """Running, or not wanted: nothing to wait for."""
        return self.state == "running" or (not self.desired and self.state == "stopped")

    def status(self) -> ChildStatus:
        """The child as ``meshssh status`` shows it."""
        return ChildStatus(
            name=self.name,
            state=self.state,
            wanted=self.desired,
            pid=self.pid or 0,
            restarts=self.restarts,
            last_exit=self.last_exit,
            last_error=self.last_error,
            ops_url=self.ops_url,
        )

    def want(self, running: bool) -> None:
        """Say whether the child should run."""
        if running != self.desired:
            self.desired = running
            self._wake.set()

    def restart(self) -> None:
        """Stop and start again (e.g. with new flags) if it is running."""
        if self.desired and self._proc is not None:
            self._restart = True
            self._wake.set()

    async def shutdown(self) -> None:
        """Stop the child for good and wait until :meth:`run` has returned."""
        self._closing = True
        self.desired = False
        self._wake.set()
        await self._finished.wait()

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change()

    async def run(self) -> None:
        """Supervise until :meth:`shutdown` (see the module docstring)."""
        try:
            await self._supervise()
        finally:
            self._finished.set()

    async def _supervise(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._closing:
            if not self.desired:
                self._set("stopped")
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.monotonic()
            code = await self._run_once()
            if self._closing or not self.desired or code is None:
                backoff = _BACKOFF_FIRST
                continue
            # An unexpected exit: restart after a backoff that a stop request cuts short.
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart(self.name)
            if time.monotonic() - started >= _HEALTHY_AFTER:
                backoff = _BACKOFF_FIRST
            self.log.warning(
                "child exited; restarting",
                extra={"exit_code": code, "in_seconds": backoff, "last_error": self.last_error},
            )
            self._set("backoff")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            backoff = min(backoff * 2, _BACKOFF_MAX)
        self._set("stopped")

    async def _run_once(self) -> int | None:
        """Run one process; returns its exit code, or None when we stopped it ourselves."""
        argv = self.argv()
        self._set("starting")
        self._run_errored = False
        self.ops_url = ""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        except OSError as e:
            self._note(f"cannot start {argv[0]}: error {e}")
            self.last_exit = 127
            return 127
        self._proc, self.pid = proc, proc.pid
        self.log.info("child started", extra={"pid": proc.pid})
        assert proc.stderr is not None
        try:
            return await self._follow(proc, proc.stderr)
        finally:
            if proc.returncode is None:  # cancelled: still stop it before the agent goes on
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stop(proc)
            self._proc, self.pid = None, None

    async def _follow(
        self, proc: asyncio.subprocess.Process, stderr: asyncio.StreamReader
    ) -> int | None:
        stopped_by_us = False
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(self._read(stderr))
            ready = tg.create_task(self._watch_ready())
            waiter = tg.create_task(proc.wait())
            while not waiter.done():
                # Check before waiting: a request may have come while we were spawning.
                if self._restart or not self.desired or self._closing:
                    self._restart = False
                    stopped_by_us = True
                    await self._stop(proc)
                    break
                self._wake.clear()
                woken = tg.create_task(self._wake.wait())
                await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
            await waiter
            ready.cancel()
            with contextlib.suppress(TimeoutError):  # a grandchild may hold the pipe open
                async with asyncio.timeout(0.5):
                    await reader
            reader.cancel()
        self.last_exit = proc.returncode
        self.ops_url = ""
        self.log.info("child exited", extra={"exit_code": proc.returncode})
        return None if stopped_by_us else proc.returncode

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        self._set("stopping")
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(self.stop_timeout):
                await proc.wait()
            return
        except TimeoutError:
            pass
        self.log.warning("child did not stop in time; killing it", extra={"pid": proc.pid})
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if self.on_killed is not None:
            await self.on_killed()

    async def _read(self, stream: asyncio.StreamReader) -> None:
        # Forward the child's log into ours, keep a tail for status, learn its ops URL.
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._note(text)
            sys.stderr.write(f"[{self.name}] {text}\n")
            if not self.ops_url and (m := _OPS.search(text)):
                self.ops_url = m[1]

    async def _watch_ready(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                await asyncio.sleep(0.1)
                if not self.ops_url:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{self.ops_url}/readyz", timeout=1.0)
                    if r.status_code == 200 and self.state == "starting":
                        self._set("running")
                        return
