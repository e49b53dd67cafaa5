"""The userspace relay: listens on ``<mesh-ip>:22``, applies the network ACL, dials upstream.

For every accepted connection, in order:

1. the source is checked against the current map for TCP on ``acl_port`` (22); a refused
   source is closed before a single byte is read and counted by reason;
2. SSH on for this peer (``--sshd-socket`` set and the map's ``ssh_enabled``): connect to
   meshssh-sshd's relay socket (a Unix socket; sshd checks that the caller is the relay's
   uid) and send a PROXY v2 header carrying the original source and destination first; SSH
   off: dial the native SSH daemon when one is configured (no header: it would not
   understand one), else close;
3. the PROXY header is written, then both sockets go to a :class:`~meshssh_relay.pump.Pipe`
   (one thread per direction) until both sides are done.

A refused upstream (or a relay socket not there yet) is retried for
``upstream_connect_timeout`` seconds, which covers sshd being started or restarted by the agent
while a client dials.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ipaddress
import socket
import time
from pathlib import Path

from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.errors import ConfigError
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.proxy_protocol import encode_v2
from meshssh_common.settings import split_host_port
from meshssh_common.tasks import TaskSet
from meshssh_common.unix_paths import reachable
from meshssh_relay.pump import Pipe
from meshssh_relay.settings import RelaySettings

__all__ = ["ConnectionResult", "ProxyRelay", "RelayMetrics", "Upstream"]

_RETRY_EVERY = 0.1


class Upstream(enum.StrEnum):
    """Where an accepted connection goes (the ``upstream`` label)."""

    SSHD = "sshd"
    NATIVE = "native"


class ConnectionResult(enum.StrEnum):
    """What became of a connection, besides an ACL refusal (the ``result`` label)."""

    ACCEPTED_SSHD = "accepted_sshd"
    ACCEPTED_NATIVE = "accepted_native"
    SSH_OFF = "ssh_off"
    UPSTREAM_FAILED = "upstream_failed"
    TOO_MANY = "too_many"


_ACCEPTED = {
    Upstream.SSHD: ConnectionResult.ACCEPTED_SSHD,
    Upstream.NATIVE: ConnectionResult.ACCEPTED_NATIVE,
}


class RelayMetrics:
    """The relay's own metrics (SPEC §8: connections accepted/denied, bytes)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.connections = metrics.counter(
            "connections",
            "Connections at the relay by outcome",
            ("result",),  # ConnectionResult | AclDecision (refused by the ACL)
        )
        self.bytes = metrics.counter(
            "bytes",
            "Bytes relayed",
            ("direction",),  # client_to_upstream | upstream_to_client (two literals)
        )
        self.active = metrics.gauge("active_connections", "Connections being relayed")
        self.connect_seconds = metrics.histogram(
            "upstream_connect_seconds",
            "Time to connect to the upstream",
            ("upstream",),  # Upstream
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5),
        )
        self.map_serial = metrics.gauge("map_serial", "Serial of the applied network map")
        self.ssh_enabled = metrics.gauge("ssh_enabled", "1 while the map has SSH on")
        self.redirect = metrics.gauge("redirect_installed", "1 while the nftables rule is in")


def bind_error(listen: str, e: OSError) -> ConfigError:
    """A :class:`ConfigError` for a failed bind that says what to do about it."""
    host, port = split_host_port(listen)
    if e.errno == errno.EACCES:
        hint = (
            f"permission denied; port {port} needs root or CAP_NET_BIND_SERVICE "
            "(or choose another port with --relay-port)"
        )
    elif e.errno == errno.EADDRINUSE:
        hint = (
            f"address in use; another daemon (a native sshd?) listens on {host}:{port}: stop it "
            "or bind it elsewhere and pass it as --native-upstream, or use the nftables mode"
        )
    elif e.errno == errno.EADDRNOTAVAIL:
        hint = f"{host} is not an address of this machine; is the mesh interface up?"
    else:
        hint = str(e)
    return ConfigError("--listen", f"cannot listen on {listen}: {hint}")


class ProxyRelay:
    """The listening side of the userspace relay (see the module docstring)."""

    def __init__(
        self,
        settings: RelaySettings,
        holder: PeerMap,
        metrics: RelayMetrics,
        log: BoundLogger,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.log = log
        self.address: tuple[str, int] = ("", 0)
        self._listener: socket.socket | None = None
        self._pipes: set[Pipe] = set()
        self._tasks = TaskSet(log)
        self._dialing = 0
        self._drained: asyncio.Event | None = None  # set by stop(): the last pipe ended
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pipes(self) -> frozenset[Pipe]:
        """The connections being relayed right now."""
        return frozenset(self._pipes)

    async def start(self) -> None:
        """Bind and start accepting.

        Raises:
            ConfigError: the address cannot be bound (the message says what to do).
        """
        host, port = split_host_port(self.settings.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(512)
        except OSError as e:
            sock.close()
            raise bind_error(self.settings.listen, e) from e
        sock.setblocking(False)
        self._listener = sock
        self._loop = asyncio.get_running_loop()
        self.address = (host, int(sock.getsockname()[1]))
        self._tasks.spawn(self._accept_loop(sock), "accept")
        self.log.info("relay listening", extra={"address": f"{host}:{self.address[1]}"})

    async def stop(self, *, linger: float = 0.0) -> None:
        """Stop accepting and dialing; then drop every relayed connection.

        Args:
            linger: seconds the relayed connections get to end by themselves first, so the
                last words of a server that is closing them too (sshd's "access revoked" when
                SSH is switched off) still reach the client.
        """
        if self._listener is not None:
            self._listener.close()
        await self._tasks.close(timeout=self.settings.shutdown_grace)
        if self._pipes and linger > 0:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(linger):
                    await self._drained.wait()
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
        for pipe in pipes:
            await asyncio.to_thread(pipe.join, 2.0)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and friends: keep serving the others
                self.log.warning("accept failed", extra={"error": str(e)})
                await asyncio.sleep(0.1)
                continue
            self._admit(client, peer)

    def _admit(self, client: socket.socket, peer: tuple[str, int]) -> None:
        local = client.getsockname()
        source, destination = (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))
        decision = check_inbound(self.holder.current, source[0], self.settings.acl_port)
        if decision is not AclDecision.ACCEPT:
            self._refuse(client, decision, source)
            return
        if len(self._pipes) + self._dialing >= self.settings.max_connections:
            self._refuse(client, ConnectionResult.TOO_MANY, source)
            return
        prefix = b""
        target: str | Path
        if self.settings.sshd_socket is not None and self.holder.ssh_enabled:
            target, kind = self.settings.sshd_socket, Upstream.SSHD
            prefix = encode_v2(_unmap(source), _unmap(destination))
        elif self.settings.native_upstream:
            target, kind = self.settings.native_upstream, Upstream.NATIVE
        else:
            self._refuse(client, ConnectionResult.SSH_OFF, source)
            return
        self._tasks.spawn(self._dial(client, prefix, target, kind, source), "dial")

    def _refuse(
        self,
        client: socket.socket,
        reason: ConnectionResult | AclDecision,
        source: tuple[str, int],
    ) -> None:
        self.metrics.connections.labels(result=reason).inc()
        self.log.info("connection refused", extra={"source": source[0], "reason": reason})
        client.close()

    async def _dial(
        self,
        client: socket.socket,
        prefix: bytes,
        target: str | Path,
        kind: Upstream,
        source: tuple[str, int],
    ) -> None:
        self._dialing += 1
        try:
            await self._dial_once(client, prefix, target, kind, source)
        finally:
            self._dialing -= 1

    async def _dial_once(
        self,
        client: socket.socket,
        prefix: bytes,
        target: str | Path,
        kind: Upstream,
        source: tuple[str, int],
    ) -> None:
        try:
            upstream = await self._connect(target, kind)
            try:
                if prefix:
                    await asyncio.get_running_loop().sock_sendall(upstream, prefix)
            except BaseException:
                upstream.close()
                raise
        except OSError as e:
            client.close()
            self.metrics.connections.labels(result=ConnectionResult.UPSTREAM_FAILED).inc()
            self.log.warning(
                "upstream unreachable",
                extra={"upstream": target, "source": source[0], "error": str(e)},
            )
            return
        except BaseException:
            client.close()
            raise
        pipe = Pipe(client, upstream, on_close=self._closed_threadsafe)
        self._pipes.add(pipe)
        self.metrics.active.set(len(self._pipes))
        self.metrics.connections.labels(result=_ACCEPTED[kind]).inc()
        self.log.info("connection relayed", extra={"source": source[0], "upstream": kind})
        pipe.start()

    async def _connect(self, target: str | Path, kind: Upstream) -> socket.socket:
        """A connected non-blocking socket to ``target`` (a Unix socket path or ``HOST:PORT``).

        Refusals (and a socket file not there yet: sshd restarting) are retried for a while.
        """
        address: str | tuple[str, int] = ""
        family = socket.AF_UNIX
        if not isinstance(target, Path):
            host, port = split_host_port(target)
            family, address = (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, port)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.upstream_connect_timeout
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                if isinstance(target, Path):
                    with reachable(target) as name:  # a long state dir path still works
                        await loop.sock_connect(sock, name)
                else:
                    await loop.sock_connect(sock, address)
            except OSError as e:
                sock.close()
                retry = e.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENOENT)
                if not retry or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(_RETRY_EVERY)
                continue
            except BaseException:
                sock.close()
                raise
            elapsed = time.perf_counter() - started
            self.metrics.connect_seconds.labels(upstream=kind).observe(elapsed)
            return sock

    def _closed_threadsafe(self, pipe: Pipe) -> None:
        # Runs on a pump thread: hand over to the event loop.
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to account
                self._loop.call_soon_threadsafe(self._closed, pipe)

    def _closed(self, pipe: Pipe) -> None:
        self._pipes.discard(pipe)
        if not self._pipes and self._drained is not None:
            self._drained.set()
        self.metrics.active.set(len(self._pipes))
        self.metrics.bytes.labels(direction="client_to_upstream").inc(pipe.bytes_in)
        self.metrics.bytes.labels(direction="upstream_to_client").inc(pipe.bytes_out)


def _unmap(address: tuple[str, int]) -> tuple[str, int]:
    """``::ffff:a.b.c.d`` (a dual-stack socket) as ``a.b.c.d``, so both ends share a family."""
    ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), address[1]
    return str(ip), address[1]
