"""Network namespaces a test creates (and deletes): peers on a veth with mesh addresses.

Processes run inside a namespace through ``ip netns exec``. The test process itself stays in
the root namespace, but can own sockets inside one: :meth:`NetNs.socket` creates the socket on
a short-lived thread that has joined the namespace (a network namespace is per thread), and
the socket keeps belonging to that namespace. :class:`PortForward` uses this to make a
root-namespace loopback service (the test's nats-server) reachable on the namespace's own
loopback, so nothing outside loopback and the test's namespaces is ever used.

Example::

    a, b = await NetNs.create("a"), await NetNs.create("b")
    await veth_pair(a, "100.64.0.1/10", b, "100.64.0.2/10")
    fwd = await PortForward.start(a, ("127.0.0.1", nats_server.port))
    proc = await a.spawn("meshssh-relay", "--nats-url", f"nats://127.0.0.1:{fwd.port}",
                         "--nats-creds", str(nats_server.creds("admin")), ...)
    ...
    await fwd.stop(); await a.delete(); await b.delete()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from meshssh_testkit.process import run_command

__all__ = ["NetNs", "PortForward", "netns_unavailable_reason", "veth_pair"]

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_counter = 0


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip tool (iproute2) is missing"
    if not os.path.exists("/proc/self/ns/net"):
        return "the kernel has no network namespaces"
    return None


async def _run(*argv: str, check: bool = True, timeout: float = 15) -> tuple[int, str, str]:
    result = await run_command(*argv, timeout=timeout, check=check)
    return result.returncode, result.out, result.err


class NetNs:
    """One named network namespace with its loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    async def create(cls, label: str) -> NetNs:
        """Create ``mst-<pid>-<n>-<label>`` (unique per test run) and bring ``lo`` up."""
        global _counter
        _counter += 1
        ns = cls(f"mst-{os.getpid()}-{_counter}-{label}"[:40])
        await _run("ip", "netns", "add", ns.name)
        await ns.ip("link", "set", "lo", "up")
        return ns

    def argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    async def run(self, *argv: str, check: bool = True) -> tuple[int, str, str]:
        """Run a command inside the namespace; returns (exit code, stdout, stderr)."""
        return await _run(*self.argv(*argv), check=check)

    async def ip(self, *args: str) -> None:
        """Run ``ip -n <ns> args``."""
        await _run("ip", "-n", self.name, *args)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a thread that has joined this namespace; returns its result."""
        box: dict[str, object] = {}

        def target() -> None:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
                box["result"] = fn()
            except BaseException as e:
                box["error"] = e
            finally:
                os.close(fd)

        thread = threading.Thread(target=target, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["result"]  # type: ignore[return-value]

    def listener(self, host: str, port: int = 0) -> socket.socket:
        """A listening TCP socket bound inside this namespace (non-blocking)."""

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        return self.call(make)

    async def delete(self) -> None:
        """Delete the namespace (its veth ends go with it)."""
        await _run("ip", "netns", "del", self.name, check=False)


async def veth_pair(a: NetNs, cidr_a: str, b: NetNs, cidr_b: str) -> tuple[str, str]:
    """Join ``a`` and ``b`` with a veth pair carrying the given addresses; returns the names."""
    # Made in the root namespace before moving: unique across concurrent test processes.
    suffix = f"{os.getpid() % 1000000}x{a.name.rsplit('-', 2)[-2]}"
    if_a, if_b = f"mv{suffix}a"[:15], f"mv{suffix}b"[:15]
    await _run("ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b)
    await _run("ip", "link", "set", if_a, "netns", a.name)
    await _run("ip", "link", "set", if_b, "netns", b.name)
    await a.ip("addr", "add", cidr_a, "dev", if_a)
    await b.ip("addr", "add", cidr_b, "dev", if_b)
    await a.ip("link", "set", if_a, "up")
    await b.ip("link", "set", if_b, "up")
    return if_a, if_b


class PortForward:
    """Forwards a loopback port inside a namespace to an address in the root namespace."""

    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self.listener = listener
        self.target = target
        self.port = int(listener.getsockname()[1])
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, ns: NetNs, target: tuple[str, int]) -> PortForward:
        """Listen on ``127.0.0.1:<any>`` inside ``ns`` and forward to ``target``."""
        fwd = cls(ns.listener("127.0.0.1"), target)
        task = asyncio.create_task(fwd._accept_loop())
        fwd._tasks.add(task)
        return fwd

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        inner_r, inner_w = await asyncio.open_connection(sock=conn)
        try:
            outer_r, outer_w = await asyncio.open_connection(*self.target)
        except OSError:
            inner_w.close()
            return
        self._writers |= {inner_w, outer_w}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_copy(inner_r, outer_w))
                tg.create_task(_copy(outer_r, inner_w))
        finally:
            for w in (inner_w, outer_w):
                self._writers.discard(w)
                w.close()

    async def stop(self) -> None:
        """Close the listener and every forwarded connection."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._writers):
            w.close()
        self.listener.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
