"""The userspace relay: listens on ``<mesh-ip>:22``, applies the network ACL, dials upstream.

For every accepted connection, in order:

1. the source is checked against the current map for TCP on ``acl_port`` (22); a refused
   source is closed before a single byte is read and counted by reason;
2. SSH on for this peer (sshd configured and the map's ``ssh_enabled``): dial meshssh-sshd
   from the mesh address (sshd trusts PROXY headers from it) and send a PROXY v2 header
   carrying the original source and destination first; SSH off: dial the native SSH daemon
   when one is configured (no header: it would not understand one), else close;
3. bytes flow through a :class:`~meshssh_relay.pump.Pipe` until both sides are done.

A refused upstream is retried for ``upstream_connect_timeout`` seconds, which covers sshd
being started or restarted by the agent while a client dials.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time

from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.errors import ConfigError
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.proxy_protocol import encode_v2
from meshssh_common.settings import split_host_port
from meshssh_relay.netmap_watch import MapHolder
from meshssh_relay.pump import Pipe
from meshssh_relay.settings import RelaySettings

__all__ = ["ProxyRelay", "RelayMetrics"]

_RETRY_EVERY = 0.1


class RelayMetrics:
    """The relay's own metrics (SPEC §8: connections accepted/denied, bytes)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.connections = metrics.counter(
            "connections",
            "Connections at the relay by outcome",
            # accepted_sshd | accepted_native | <AclDecision> | ssh_off | upstream_failed |
            # too_many
            ("result",),
        )
        self.bytes = metrics.counter(
            "bytes",
            "Bytes relayed",
            ("direction",),  # client_to_upstream | upstream_to_client
        )
        self.active = metrics.gauge("active_connections", "Connections being relayed")
        self.connect_seconds = metrics.histogram(
            "upstream_connect_seconds",
            "Time to connect to the upstream",
            ("upstream",),  # sshd | native
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
        holder: MapHolder,
        metrics: RelayMetrics,
        log: BoundLogger,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.log = log
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._pipes: set[Pipe] = set()
        self._dials: set[asyncio.Task[None]] = set()
        host, _ = split_host_port(settings.listen)
        self._source_ip = "" if ipaddress.ip_address(host).is_unspecified else host

    async def start(self) -> None:
        """Bind and start accepting.

        Raises:
            ConfigError: the address cannot be bound (the message says what to do).
        """
        host, port = split_host_port(self.settings.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._accept, host, port, reuse_address=True, backlog=512
            )
        except OSError as e:
            raise bind_error(self.settings.listen, e) from e
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        self.log.info("relay listening", extra={"address": f"{host}:{self.address[1]}"})

    @property
    def pipes(self) -> frozenset[Pipe]:
        """The connections being relayed (or dialled) right now."""
        return frozenset(self._pipes)

    async def stop(self) -> None:
        """Stop accepting, drop every relayed connection and pending dial."""
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        for task in list(self._dials):
            task.cancel()
        if self._dials:
            await asyncio.gather(*self._dials, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self) -> asyncio.Protocol:
        return Pipe(on_accept=self._admit, on_close=self._closed).client

    def _admit(self, pipe: Pipe, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        source, destination = (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))
        decision = check_inbound(self.holder.current, source[0], self.settings.acl_port)
        if decision is not AclDecision.ACCEPT:
            self._refuse(transport, decision.value, source)
            return
        if len(self._pipes) >= self.settings.max_connections:
            self._refuse(transport, "too_many", source)
            return
        if self.settings.sshd and self.holder.ssh_enabled:
            target, kind = self.settings.sshd, "sshd"
            pipe.prefix = encode_v2(_unmap(source), _unmap(destination))
        elif self.settings.native_upstream:
            target, kind = self.settings.native_upstream, "native"
        else:
            self._refuse(transport, "ssh_off", source)
            return
        self._pipes.add(pipe)
        self.metrics.active.set(len(self._pipes))
        task = asyncio.get_running_loop().create_task(self._dial(pipe, target, kind, source))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    def _refuse(
        self, transport: asyncio.BaseTransport, reason: str, source: tuple[str, int]
    ) -> None:
        self.metrics.connections.labels(result=reason).inc()
        self.log.info("connection refused", extra={"source": source[0], "reason": reason})
        transport.close()

    async def _dial(self, pipe: Pipe, target: str, kind: str, source: tuple[str, int]) -> None:
        host, port = split_host_port(target)
        loop = asyncio.get_running_loop()
        local = (self._source_ip, 0) if kind == "sshd" and self._source_ip else None
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.upstream_connect_timeout
        while True:
            try:
                await loop.create_connection(lambda: pipe.upstream, host, port, local_addr=local)
                break
            except OSError as e:
                retry = e.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL)
                if not retry or time.monotonic() >= deadline or pipe.client.closed:
                    self.metrics.connections.labels(result="upstream_failed").inc()
                    self.log.warning(
                        "upstream unreachable",
                        extra={"upstream": target, "source": source[0], "error": str(e)},
                    )
                    pipe.upstream_failed()
                    return
            await asyncio.sleep(_RETRY_EVERY)
        self.metrics.connect_seconds.labels(upstream=kind).observe(time.perf_counter() - started)
        self.metrics.connections.labels(result=f"accepted_{kind}").inc()
        self.log.info("connection relayed", extra={"source": source[0], "upstream": kind})

    def _closed(self, pipe: Pipe) -> None:
        self._pipes.discard(pipe)
        self.metrics.active.set(len(self._pipes))
        self.metrics.bytes.labels(direction="client_to_upstream").inc(pipe.bytes_in)
        self.metrics.bytes.labels(direction="upstream_to_client").inc(pipe.bytes_out)


def _unmap(address: tuple[str, int]) -> tuple[str, int]:
    """``::ffff:a.b.c.d`` (a dual-stack socket) as ``a.b.c.d``, so both ends share a family."""
    ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), address[1]
    return str(ip), address[1]
