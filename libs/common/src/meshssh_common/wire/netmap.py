"""The network map: a full per-peer snapshot the management plane publishes (SPEC §4, §6).

A peer applies only snapshots whose ``serial`` is higher than the one it holds. The map is
stored in JetStream KV ``meshssh-netmaps``: ``peer.<id>`` holds the peer's current document,
either a whole :class:`NetworkMap` or a :class:`MapDelta` against the snapshot stored under
``snap.<id>`` (a change that touches 1,000 peers then sends each a few KiB, not its whole
map; see :mod:`meshssh_common.map_chain`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from meshssh_common.wire.base import Count, MeshIp, Part, PeerId, Port, Wire

__all__ = [
    "Action",
    "FirewallRule",
    "JwtConfig",
    "MapDelta",
    "MapDoc",
    "NetworkMap",
    "PeerConfig",
    "PortRange",
    "Protocol",
    "Recording",
    "RemotePeer",
    "SessionRules",
    "SourcePeer",
    "SshAuth",
]

Protocol = Literal["all", "tcp", "udp", "icmp"]
Action = Literal["accept", "drop"]
Recording = Literal["off", "best_effort", "required"]


class PortRange(Part, frozen=True, kw_only=True):
    """An inclusive port range."""

    start: Port
    end: Port


class FirewallRule(Part, frozen=True, kw_only=True):
    """One inbound rule of the receiving peer.

    ``port`` empty and ``port_range`` None means every port. ``ssh`` policy rules are
    emitted as ``tcp`` (with the 22022 copy), as NetBird does.
    """

    sources: tuple[str, ...]  # CIDR prefixes, e.g. "100.64.0.7/32"
    protocol: Protocol
    action: Action
    policy_id: str
    port: str = ""
    port_range: PortRange | None = None


class JwtConfig(Part, frozen=True, kw_only=True):
    """How a peer's SSH server validates the JWTs users present (SPEC §6)."""

    issuer: str
    audiences: tuple[str, ...] = ()
    keys_location: str = ""
    user_id_claim: str = "sub"
    max_token_age: Annotated[int, msgspec.Meta(ge=1)] = 600
    clock_skew: Annotated[int, msgspec.Meta(ge=0)] = 60
    # When the user id is the ``email`` claim, the token must say ``email_verified: true``
    # (anyone can put an unverified address in their profile at many providers).
    require_email_verified: bool = True


class PeerConfig(Part, frozen=True, kw_only=True):
    """The receiving peer's own settings from the management plane."""

    id: PeerId
    name: str
    mesh_ip: MeshIp
    mesh_prefix: str
    ssh_enabled: bool = False
    jwt: JwtConfig | None = None
    # Sessions an administrator ended (``meshctl peers end-session``, the dashboard): sshd
    # closes a connection carrying one of them, as it does when access is revoked.
    ended_sessions: tuple[str, ...] = ()


class RemotePeer(Part, frozen=True, kw_only=True):
    """A peer the receiving peer may reach, with its pinned SSH host key."""

    id: PeerId
    name: str
    mesh_ip: MeshIp
    ssh_host_key: str = ""  # OpenSSH public key line, "ssh-ed25519 AAAA..."
    ssh_enabled: bool = False
    ssh_port: Port = 0  # from the peer's metadata (0: unknown)
    relay_port: Port = 0


class SourcePeer(Part, frozen=True, kw_only=True):
    """A peer that the receiving peer's inbound rules accept (who may connect to it).

    sshd names the source of each connection with it in audit events; it grants nothing.
    """

    id: PeerId
    name: str
    mesh_ip: MeshIp


class SessionRules(Part, frozen=True, kw_only=True):
    """What an ``ssh`` rule asks of the sessions it lets in (0 means no limit).

    ``recording``: ``off``, ``best_effort`` (never blocks a session) or ``required`` (no
    session without the recording stream's ack). ``idle_timeout`` and ``max_session`` end a
    session; ``check_period`` refuses a login whose token's ``auth_time`` (or ``iat``) is
    older. ``record_input`` adds keystrokes to recordings; ``record_exec`` records non-PTY
    sessions' stdout and stderr.
    """

    recording: Recording = "off"
    idle_timeout: Count = 0
    max_session: Count = 0
    check_period: Count = 0
    record_input: bool = False
    record_exec: bool = False


class SshAuth(Part, frozen=True, kw_only=True):
    """The SSH authorization table: who may log in as which local user (fail closed).

    ``authorized_users`` holds hex BLAKE2b-128 hashes of user ids (the value of
    ``user_id_claim``); ``machine_users`` maps a local user, or ``*``, to indexes into it.
    ``any_validated_user`` lists the local users, or ``*``, that every user whose token the
    validator accepts may log in as, known to management or not (legacy TCP/22 rules). Absent
    (maps from before it existed) means nobody is let in that way.
    """

    user_id_claim: str = "sub"
    authorized_users: tuple[str, ...] = ()
    machine_users: dict[str, tuple[Count, ...]] = msgspec.field(default_factory=dict)
    any_validated_user: tuple[str, ...] = ()
    # Session rules of ``ssh`` rules: ``session_grants`` maps "<index>/<local user or *>"
    # (index into ``authorized_users``) to an index into ``session_rules``; absent: none.
    session_rules: tuple[SessionRules, ...] = ()
    session_grants: dict[str, Count] = msgspec.field(default_factory=dict)


class NetworkMap(Wire, tag="policy.netmap.v1", frozen=True, kw_only=True):
    """A full snapshot for one peer; ``serial`` strictly increases per peer."""

    serial: Annotated[int, msgspec.Meta(ge=1)]
    peer: PeerConfig
    firewall_rules: tuple[FirewallRule, ...] = ()
    remote_peers: tuple[RemotePeer, ...] = ()
    ssh_auth: SshAuth = msgspec.field(default_factory=SshAuth)
    source_peers: tuple[SourcePeer, ...] = ()  # peers an accept rule lets in (for audit)
    # The management state (KV revision per state bucket) this map was computed from. policy
    # replicas never replace a map with one computed from older state; peers ignore it.
    state_revisions: dict[str, Count] = msgspec.field(default_factory=dict)


class MapDelta(Wire, tag="policy.netmap-delta.v1", frozen=True, kw_only=True):
    """A peer's map as the fields that differ from its snapshot (``snap.<id>``).

    The map it stands for is the snapshot with every field given here replaced, ``serial``
    and ``state_revisions`` taken from here. ``base_serial`` and ``base_hash`` (the BLAKE2b-256
    of the snapshot's signed payload bytes, :func:`meshssh_common.map_chain.snapshot_hash`)
    name that snapshot exactly: a delta never applies to another one, even one with the same
    serial written by a second policy replica in a race. Deltas are cumulative (each against
    the snapshot, not the previous delta), so a peer needs the snapshot and the newest delta,
    never a chain. ``content`` is policy's content digest of the whole map (it decides what
    is unchanged after a restart); peers ignore it.
    """

    serial: Annotated[int, msgspec.Meta(ge=1)]
    base_serial: Annotated[int, msgspec.Meta(ge=1)]
    base_hash: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    content: Annotated[bytes, msgspec.Meta(max_length=64)] = b""
    peer: PeerConfig | None = None
    firewall_rules: tuple[FirewallRule, ...] | None = None
    remote_peers: tuple[RemotePeer, ...] | None = None
    ssh_auth: SshAuth | None = None
    source_peers: tuple[SourcePeer, ...] | None = None
    state_revisions: dict[str, Count] = msgspec.field(default_factory=dict)

    def apply(self, base: NetworkMap) -> NetworkMap:
        """The whole map: ``base`` (the snapshot this delta names) with its changes."""
        changes: dict[str, object] = {
            name: value for name in DELTA_FIELDS if (value := getattr(self, name)) is not None
        }
        return msgspec.structs.replace(
            base, serial=self.serial, state_revisions=self.state_revisions, **changes
        )


DELTA_FIELDS: tuple[str, ...] = (
    "peer",
    "firewall_rules",
    "remote_peers",
    "ssh_auth",
    "source_peers",
)
"""The :class:`NetworkMap` fields a :class:`MapDelta` can carry: all but the bookkeeping."""

MapDoc = NetworkMap | MapDelta
"""What ``peer.<id>`` holds: a whole map, or a delta against ``snap.<id>``."""
