"""Logging in to a peer's sshd over the mesh, as a meshssh client does it.

``meshssh ssh`` (cli) and the browser terminals' gateway both dial a peer's mesh address from
the local mesh address and log in with a per-peer token as the password, trusting only the
host key the signed map pins. :func:`open_mesh_socket` opens that connection and
:func:`pinned_login_options` gives asyncssh's options for the login: the pinned key only, no
``~/.ssh/config``, no agent, no client keys, password authentication alone, AES-GCM first.

Example::

    sock = await open_mesh_socket(peer.mesh_ip, 22022, source=my_mesh_ip)
    conn = await asyncssh.connect(
        sock=sock, client_factory=lambda: client, **pinned_login_options(pinned, "alice", "X-1")
    )
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncssh

__all__ = ["CIPHERS", "open_mesh_socket", "pinned_login_options"]

# AES-GCM first: one AEAD call per packet in asyncssh (its ChaCha20-Poly1305 costs three)
CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
]


async def open_mesh_socket(
    addr: str, port: int, source: str, *, nodelay: bool = False
) -> socket.socket:
    """A TCP connection to ``addr``:``port`` from the local mesh address ``source``.

    ``nodelay`` turns Nagle off (a terminal's keystrokes). The socket is closed on any error.
    """
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((source, 0))
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (addr, port))
    except BaseException:
        sock.close()
        raise
    return sock


def pinned_login_options(
    pinned: asyncssh.SSHKey, username: str, client_version: str
) -> dict[str, Any]:
    """Asyncssh client options: trust only ``pinned``, log in as ``username`` by password only."""
    return {
        "config": None,
        "username": username,
        "known_hosts": ([], [], []),
        "server_host_key_algs": [pinned.get_algorithm()],
        "client_version": client_version,
        "client_keys": None,
        "agent_path": None,
        "password_auth": True,
        "kbdint_auth": False,
        "gss_auth": False,
        "host_based_auth": False,
        "public_key_auth": False,
        "connect_timeout": None,
        "encryption_algs": CIPHERS,
    }
