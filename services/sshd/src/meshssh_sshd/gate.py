"""The connection gate: accept TCP, decide, and only then start SSH (SPEC §2).

The gate owns the listening socket. For each accepted connection, before a single SSH byte:

1. the TCP peer is the client and the ACL port is 22022: a PROXY header is never read here
   (the relay's connections arrive on the Unix socket of :mod:`meshssh_sshd.relay_socket`,
   which checks the caller's uid, reads the header and hands over to :meth:`Gate.admit` with
   the original client and port 22);
2. refuse while draining, when the source is over its source-wide auth-failure limit (one
   user's failures only refuse that user, at auth), or when too many
   connections are still authenticating (``--max-startups``), or too many from this source
   (``--max-startups-per-source``, OpenSSH's ``PerSourceMaxStartups``); a source whose
   connections keep failing before authentication (garbage, bad versions, login timeouts)
   is refused like one whose logins fail (:mod:`meshssh_sshd.rate_limit`);
3. name the source: the peer at the client's address in the current map (``source_peers``,
   then ``remote_peers``), kept on the :class:`Origin` for every audit event of the connection;
4. check the current map: inside the mesh prefix, not the peer itself, an ``accept`` rule for
   TCP on that port and no ``drop`` rule, SSH enabled for the peer.

A refused connection is closed without a banner, counted by reason, logged and audited (both
throttled, so a scan cannot flood the audit stream). An accepted one is handed to asyncssh.

Example::

    gate = Gate(core, "100.64.0.1:22022", serve_connection)
    host, port = gate.open()
    tg.create_task(gate.run())
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.errors import ConfigError
from meshssh_common.settings import split_host_port
from meshssh_sshd.origin import Origin

if TYPE_CHECKING:
    from meshssh_sshd.core import SshdCore

__all__ = ["Gate", "HandOver", "normal_ip"]

HandOver = Callable[[socket.socket, Origin], Awaitable[None]]
_AUDIT_PER_SECOND = 20  # refused-connection audit records (and log lines) per second, at most
_BACKLOG = 1024


def normal_ip(ip: str) -> str:
    """``ip`` without a zone, and ``::ffff:a.b.c.d`` as ``a.b.c.d``."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class Gate:
    """The listening socket and the decision made for every connection on it."""

    def __init__(self, core: SshdCore, listen: str, hand_over: HandOver) -> None:
        self._core = core
        self._listen = listen
        self._hand_over = hand_over
        self._sock: socket.socket | None = None
        self._window = (0, 0)  # (second, refusals recorded in it): the audit throttle

    def open(self) -> tuple[str, int]:
        """Bind and listen; returns the bound address (port 0 resolved).

        Raises:
            ConfigError: the address cannot be bound (in use, not local, no permission).
        """
        host, port = split_host_port(self._listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(_BACKLOG)
        except OSError as e:
            sock.close()
            raise ConfigError("--listen", f"cannot listen on {self._listen}: {e}") from e
        sock.setblocking(False)
        self._sock = sock
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop accepting (connections already handed over are not touched)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self) -> None:
        """Accept until cancelled or closed."""
        loop = asyncio.get_running_loop()
        while self._sock is not None:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as e:
                if self._sock is None or e.errno == errno.EBADF:
                    return  # closed for shutdown
                # EMFILE and friends: back off instead of spinning.
                self._core.log.warning("accept failed", extra={"error": str(e)})
                await asyncio.sleep(0.1)
                continue
            if self._blocked_fast(conn, peer):
                continue
            self._core.tasks.spawn(self._admit(conn, peer), "admit")

    def _blocked_fast(self, sock: socket.socket, peer: tuple[str, int]) -> bool:
        """Refuse a source in backoff right at accept, without a task (flood fast path)."""
        tcp_ip = normal_ip(str(peer[0]))
        if not self._core.limiter.source_blocked(tcp_ip):
            return False
        origin = Origin(tcp_ip, int(peer[1]), "", 0, self._core.settings.acl_port)
        self.refuse(sock, origin, "rate_limited", "")
        return True

    async def _admit(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        core = self._core
        settings = core.settings
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            local = sock.getsockname()
        except OSError:  # reset before we looked at it
            sock.close()
            core.metrics.connections.labels(outcome="reset").inc()
            return
        tcp_ip = normal_ip(str(peer[0]))
        origin = Origin(
            tcp_ip, int(peer[1]), normal_ip(str(local[0])), int(local[1]), settings.acl_port
        )
        await self.admit(sock, origin)

    async def admit(self, sock: socket.socket, origin: Origin) -> None:
        """Decide on a connection from ``origin`` (steps 2-4); refuse it or hand it over."""
        core = self._core
        origin = self._named(origin)
        reason = self._decide(origin)
        if reason is not None:
            self.refuse(sock, origin, reason, "")
            return
        core.metrics.connections.labels(outcome="accepted").inc()
        core.startup_began(origin.client_ip)
        await self._hand_over(sock, origin)

    def _named(self, origin: Origin) -> Origin:
        """``origin`` with its source peer's id and name when the map has a peer there."""
        peer = self._core.maps.peer_at(origin.client_ip)
        if peer is None:
            return origin
        return dataclasses.replace(origin, peer_id=peer.id, peer_name=peer.name)

    def _decide(self, origin: Origin) -> str | None:
        core = self._core
        if core.draining:
            return "draining"
        if core.limiter.source_blocked(origin.client_ip):
            return "rate_limited"
        if core.startups >= core.settings.max_startups:
            return "too_many_startups"
        if (
            core.startups_by_source.get(origin.client_ip, 0)
            >= core.settings.max_startups_per_source
        ):
            return "too_many_startups_from_source"
        netmap = core.maps.current
        decision = check_inbound(netmap, origin.client_ip, origin.acl_port)
        if decision is not AclDecision.ACCEPT:
            return str(decision.value)
        if netmap is not None and not netmap.peer.ssh_enabled:
            return "ssh_disabled"
        return None

    def refuse(self, sock: socket.socket, origin: Origin, reason: str, detail: str) -> None:
        """Close ``sock`` unanswered; count, audit and log why (audit and log throttled)."""
        core = self._core
        with contextlib.suppress(OSError):
            sock.close()
        core.metrics.connections.labels(outcome=reason).inc()
        now = int(time.monotonic())
        second, count = self._window
        if second != now:
            second, count = now, 0
        self._window = (second, count + 1)
        if count >= _AUDIT_PER_SECOND:
            return
        core.audit.emit(
            "connection-refused",
            source_addr=origin.label,
            reason=reason,
            result="refused",
            **origin.peer_fields(),
        )
        core.log.info(
            "connection refused",
            extra={
                "client": origin.label,
                "reason": reason,
                "via_relay": origin.via_relay,
                "detail": detail,
            },
        )
