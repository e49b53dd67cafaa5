"""Ports for servers that cannot report a port-0 bind (Prometheus, glewlwyd, ``ssh -L``).

Everything that can bind port 0 and say which port it got should do so instead: this port is
free when the OS hands it out, and taken again only if another process binds exactly it
before the server does (the OS spreads port-0 binds over the whole ephemeral range).

Example::

    port = free_port("127.0.0.2")
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(*hosts: str) -> int:
    """A TCP port the OS just handed out on ``hosts[0]`` that is also free on every other host.

    Raises:
        OSError: no such port turned up in 50 tries.
    """
    hosts = hosts or ("127.0.0.1",)
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
