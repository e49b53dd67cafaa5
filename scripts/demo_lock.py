"""One `make run` per network namespace: the demo's lock, and who holds a busy port.

The demo's peers live on fixed loopback addresses (127.0.0.2, 127.0.0.3; SPEC §10), so two
demos cannot run side by side in one network namespace, whichever checkout or run dir they
use. The lock is the abstract Unix socket ``@meshssh-demo``: binding it is atomic, the kernel
releases it when the holder exits (even on SIGKILL), it needs no file that another user or a
different ``TMPDIR`` could get in the way of, and its scope is exactly the network namespace
whose addresses the demo takes. The holder also answers on it: a connection reads one JSON
line saying where the running demo is (pid, run dir, API URL, endpoints.json), which a second
`make run` prints instead of failing on a busy port.

Example::

    lock = await DemoLock.acquire(pid=os.getpid(), run_dir="/src/.run", api_url="http://...")
    lock.update(state="running", endpoints="/src/.run/endpoints.json")
    await lock.release()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "DemoBusy", "DemoLock", "holder_info", "port_in_use"]

LOCK_NAME = "\0meshssh-demo"


class DemoBusy(Exception):
    """Another demo holds the lock; the message says where it is."""

    def __init__(self, info: dict[str, object]) -> None:
        self.info = info
        pid = info.get("pid", "?")
        if not info:
            where = "another demo is starting or stopping (it did not say where)"
        else:
            where = (
                f"a demo is already {info.get('state', 'running')} (pid {pid}, state in "
                f"{info.get('run_dir')}, API {info.get('api_url')}"
                + (f", endpoints in {info['endpoints']}" if info.get("endpoints") else "")
                + ")"
            )
        super().__init__(
            f"{where}. One demo runs at a time (its peers use 127.0.0.2 and 127.0.0.3): use "
            f"that one, or stop it first (Ctrl-C in its terminal, or kill {pid})."
        )


def holder_info(timeout: float = 2.0) -> dict[str, object] | None:
    """What the running demo says about itself; None when no demo holds the lock."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(LOCK_NAME)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(4096):
                data += chunk
    with contextlib.suppress(ValueError):
        info = json.loads(data)
        if isinstance(info, dict):
            return info
    return {}


class DemoLock:
    """The held lock; it answers who holds it until :meth:`release`."""

    def __init__(self, sock: socket.socket, info: dict[str, object]) -> None:
        self.sock = sock
        self.info = info
        self.server: asyncio.Server | None = None

    @classmethod
    async def acquire(cls, **info: object) -> DemoLock:
        """Take the lock and start answering on it.

        Raises:
            DemoBusy: another demo holds it.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(LOCK_NAME)
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRINUSE:
                raise
            raise DemoBusy(holder_info() or {}) from None
        sock.listen(8)
        lock = cls(sock, {"state": "starting", "started_at": time.time(), **info})
        lock.server = await asyncio.start_unix_server(lock._answer, sock=sock)
        return lock

    def update(self, **info: object) -> None:
        """Change what the lock tells a second demo."""
        self.info.update(info)

    async def _answer(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(json.dumps(self.info).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def release(self) -> None:
        """Stop answering and give the lock up."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.server.wait_closed()
        self.sock.close()


def _listener_inode(host: str, port: int) -> str | None:
    """The inode of the TCP socket listening on ``host:port`` (IPv4), from /proc/net/tcp."""
    want = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    anyaddr = f"00000000:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[1] in (want, anyaddr):  # 0A: LISTEN
                return fields[9]
    return None


def _socket_owner(inode: str) -> str:
    """``pid N (command line)`` of a process holding socket ``inode``, when visible."""
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    return f"pid {proc.name} ({cmd.strip()[:120]})"
    return "a process this user cannot see"


def port_in_use(hostport: str) -> str:
    """Empty when ``host:port`` can be bound now, else what holds it (for the error)."""
    host, _, port = hostport.rpartition(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind((host, int(port)))
            return ""
        except OSError as e:
            inode = _listener_inode(host, int(port))
            owner = _socket_owner(inode) if inode else "another program"
            return f"{hostport} is in use by {owner} ({e.strerror})"
