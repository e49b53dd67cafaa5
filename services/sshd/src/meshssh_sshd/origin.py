"""Where an SSH connection came from, after the gate resolved any PROXY v2 header.

For a direct connection the origin is the TCP peer and the ACL port is 22022; for one the
relay forwarded (on sshd's relay socket) it is the original client from the header and the
ACL port is 22
(SPEC §2). Revocation re-checks every live connection against the same pair. The gate also
names the source peer (id and name, from the map at admission) for the audit events.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Origin"]


@dataclass(frozen=True, slots=True)
class Origin:
    """The client's address, the server's address, and the port the ACL is checked on."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    acl_port: int
    via_relay: bool = False
    peer_id: str = ""  # the source peer in the map (empty: no peer has that address)
    peer_name: str = ""

    def peer_fields(self) -> dict[str, str]:
        """The source peer's audit fields (``source_peer``, ``source_peer_name``)."""
        return {"source_peer": self.peer_id, "source_peer_name": self.peer_name}

    @property
    def label(self) -> str:
        """``ip:port`` of the client, for logs and audit."""
        host = f"[{self.client_ip}]" if ":" in self.client_ip else self.client_ip
        return f"{host}:{self.client_port}"
