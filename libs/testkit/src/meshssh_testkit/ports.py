"""Ports for servers that cannot report a port-0 bind (Prometheus, glewlwyd, ``ssh -L``).

Everything that can bind port 0 and say which port it got should do so instead. The port is
drawn at random from below the kernel's ephemeral range (``ip_local_port_range``), where
port-0 binds and outgoing connections never land, so between the pick and the server's bind
only another explicit pick of the very same number could take it. When that range is too
small, the OS's own port-0 choice is used.

Example::

    port = free_port("127.0.0.2")
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_LOWEST = 10_000  # below: well-known and registered services the machine may run


def _below_ephemeral() -> range:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(_LOWEST, low) if low - _LOWEST >= 1_000 else range(0)


def _free_on(port: int, hosts: tuple[str, ...]) -> bool:
    try:
        for host in hosts:
            with socket.socket() as s:
                s.bind((host, port))
    except OSError:
        return False
    return True


def free_port(*hosts: str) -> int:
    """A TCP port the OS just handed out on ``hosts[0]`` that is also free on every other host.

    Raises:
        OSError: no such port turned up in 50 tries.
    """
    hosts = hosts or ("127.0.0.1",)
    quiet = _below_ephemeral()
    for _ in range(50 if quiet else 0):
        port = random.choice(quiet)
        if _free_on(port, hosts):
            return port
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free on all of {hosts}")
