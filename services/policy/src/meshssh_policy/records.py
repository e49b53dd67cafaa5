"""The management plane's durable records and where each lives in JetStream KV (SPEC §4, §5).

These are policy's own state (not NATS payloads between parts): msgspec Structs stored as JSON
in the five state buckets, always written with compare-and-set on the entry's revision.

Keys, per bucket:

- ``meshssh-peers``: ``peer.<id>`` (:class:`PeerRecord`), plus address and name claims
  ``ip.<address>`` / ``name.<name>`` (:class:`Claim`), created with ``create`` so two peers can
  never hold one address or one name, even across replicas;
- ``meshssh-users``: ``user.<blake2b(id)>`` (ids are free-form IdP subjects);
- ``meshssh-groups``: ``group.<id>``; ``meshssh-policies``: ``policy.<id>``;
- ``meshssh-setup-keys``: ``key.<id>``, where ``id`` is derived from the key's hash, so a key
  is found by its value without ever being stored.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Annotated, Literal

import msgspec

from meshssh_common.ssh_auth import hash_user_id
from meshssh_common.wire import PeerMeta, PortRange
from meshssh_common.wire.netmap import Recording

__all__ = [
    "ID_PATTERN",
    "Claim",
    "GroupRecord",
    "KeyKind",
    "KeyType",
    "PeerRecord",
    "PolicyRecord",
    "RuleAction",
    "RuleProtocol",
    "RuleRecord",
    "SetupKeyRecord",
    "UserRecord",
    "check_record",
    "group_key",
    "ip_key",
    "name_key",
    "peer_key",
    "policy_key",
    "secret_hash",
    "setup_key_id",
    "setup_key_key",
    "user_key",
]

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""Ids of peers, groups, policies and setup keys: lowercase DNS-label-like tokens."""

RuleProtocol = Literal["all", "tcp", "udp", "icmp", "ssh"]
RuleAction = Literal["accept", "drop"]
KeyType = Literal["reusable", "one-off"]
KeyKind = Literal["peer", "gateway"]  # gateway: the peer may redeem browser tickets (issue 20)
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the stored records (untagged; the bucket says what a value is)."""


class PeerRecord(Record, frozen=True, kw_only=True):
    """A registered peer. ``ssh_enabled`` is the admin switch; the credential is only hashed.

    ``nats_key`` is the public key its bus credential was issued to (the seed stays on the peer).
    """

    id: Id
    name: str
    mesh_ip: str
    meta: PeerMeta
    credential_hash: str
    ssh_host_key: str = ""
    ssh_enabled: bool = False
    setup_key_id: str = ""
    created_at: float = 0.0
    last_login: float = 0.0
    ended_sessions: tuple[str, ...] = ()  # sessions an admin ended, newest last (bounded)
    nats_key: str = ""  # its NATS user public key ("U..."); revoked when the peer goes
    kind: KeyKind = "peer"  # the kind of the setup key it registered with (kept for renewals)


class Claim(Record, frozen=True, kw_only=True):
    """Who holds a mesh address or a peer name."""

    peer_id: Id
    at: float


class UserRecord(Record, frozen=True, kw_only=True):
    """An identity-provider subject (``id`` = the value of the user-id claim).

    ``first_seen`` and ``last_login`` come from accepted SSH logins (0: never logged in); a
    user management did not know is created by its first accepted login.
    """

    id: str
    email: str = ""
    name: str = ""
    created_at: float = 0.0
    first_seen: float = 0.0
    last_login: float = 0.0


class GroupRecord(Record, frozen=True, kw_only=True):
    """A set of peers and/or users, by id."""

    id: Id
    name: str = ""
    peers: tuple[str, ...] = ()
    users: tuple[str, ...] = ()


class RuleRecord(Record, frozen=True, kw_only=True):
    """One directional rule: ``sources`` may reach ``destinations`` (group ids)."""

    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    protocol: RuleProtocol = "all"
    ports: tuple[str, ...] = ()
    port_ranges: tuple[PortRange, ...] = ()
    action: RuleAction = "accept"
    authorized_groups: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    recording: Recording = "off"  # session rules (``ssh`` rules only; 0: no limit)
    idle_timeout: int = 0
    max_session: int = 0
    check_period: int = 0
    record_input: bool = False
    record_exec: bool = False


class PolicyRecord(Record, frozen=True, kw_only=True):
    """A named, switchable list of rules."""

    id: Id
    name: str
    description: str = ""
    enabled: bool = True
    rules: tuple[RuleRecord, ...] = ()


class SetupKeyRecord(Record, frozen=True, kw_only=True):
    """A key peers register with; only its hash is stored.

    ``usage_limit`` 0 means unlimited (a one-off key has 1); ``expires_at`` 0 means never.
    Peers registered with the key join ``auto_groups`` and start with the admin SSH switch
    set to ``ssh_enabled``; a ``gateway`` key makes them browser-terminal gateways (their bus
    identity may redeem tickets: :func:`~meshssh_common.bus_permissions.gateway_permissions`).
    """

    id: Id
    name: str
    key_hash: str
    type: KeyType = "reusable"
    kind: KeyKind = "peer"
    expires_at: float = 0.0
    usage_limit: int = 0
    used: int = 0
    revoked: bool = False
    auto_groups: tuple[str, ...] = ()
    ssh_enabled: bool = False
    created_at: float = 0.0
    last_used: float = 0.0


def check_record(record: object) -> None:
    """Semantic checks a decoded record must pass before it is used.

    Raises:
        ValueError: e.g. a peer whose mesh address is not an IP address.
    """
    if isinstance(record, PeerRecord):
        ipaddress.ip_address(record.mesh_ip)


def secret_hash(secret: str) -> str:
    """SHA-256 of a high-entropy secret (peer credentials, setup keys), as hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def setup_key_id(key: str) -> str:
    """The id of the setup key whose value is ``key`` (derived from its hash)."""
    return "k" + hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()


def peer_key(peer_id: str) -> str:
    """KV key of a peer record."""
    return f"peer.{peer_id}"


def ip_key(mesh_ip: str) -> str:
    """KV key of the claim on a mesh address (``:`` of IPv6 becomes ``_``)."""
    return "ip." + mesh_ip.replace(":", "_")


def name_key(name: str) -> str:
    """KV key of the claim on a peer name."""
    return f"name.{name}"


def user_key(user_id: str) -> str:
    """KV key of a user record (the id hashed: IdP subjects may hold any character)."""
    return f"user.{hash_user_id(user_id)}"


def group_key(group_id: str) -> str:
    """KV key of a group record."""
    return f"group.{group_id}"


def policy_key(policy_id: str) -> str:
    """KV key of a policy record."""
    return f"policy.{policy_id}"


def setup_key_key(key_id: str) -> str:
    """KV key of a setup key record."""
    return f"key.{key_id}"
