"""One remote peer of the network map, as the drop-in and the SSH client need it.

The agent lists these in the drop-in (:mod:`meshssh_agent.dropin`); ``meshssh ssh`` and its
proxy resolve a host name or mesh address to one of them with :func:`find_peer`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshssh_common.wire import RemotePeer

__all__ = ["PeerEntry", "find_peer"]


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One remote peer from the network map, as the client needs it."""

    name: str
    mesh_ip: str
    host_key_line: str  # OpenSSH public key line; empty when the map carries none
    peer_id: str = ""  # the map's id: the audience of per-peer tokens (empty: unknown)

    def hosts(self) -> tuple[str, ...]:
        """The names OpenSSH may be given for this peer: its name and its mesh address."""
        return (self.name, self.mesh_ip)

    @classmethod
    def from_remote(cls, peer: RemotePeer) -> PeerEntry:
        """The entry for a remote peer of a network map."""
        return cls(
            name=peer.name,
            mesh_ip=peer.mesh_ip,
            host_key_line=peer.ssh_host_key,
            peer_id=peer.id,
        )


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def find_peer(peers: Iterable[PeerEntry], host: str) -> PeerEntry | None:
    """The peer that ``host`` names, or None.

    ``host`` is a mesh address (any spelling, IPv6 in brackets too) or a peer name (any case,
    a trailing dot allowed).
    """
    address = _address(host)
    name = host.rstrip(".").lower()
    for peer in peers:
        if address is not None and address == _address(peer.mesh_ip):
            return peer
        if address is None and name and name == peer.name.lower():
            return peer
    return None
