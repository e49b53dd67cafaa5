"""Every NATS subject, stream and KV bucket name of meshssh, in one place (SPEC §5).

Grammar: ``meshssh.<service>.v<N>.<req|evt>.<verb>[.<token>]``. Tokens are validated before
they are put into a subject; nobody formats a subject inline anywhere else.

Example::

    await nc.publish(subjects.heartbeat(peer_id), encode(hb))
    await kv.put(subjects.netmap_key(peer_id), encode(netmap))
"""

from __future__ import annotations

import re
from typing import Final

from meshssh_common.errors import BadRequest

__all__ = [
    "AUDIT_ADMIN",
    "AUDIT_AUTH_ACCEPTED_ALL",
    "AUDIT_STREAM",
    "AUDIT_SUBJECTS",
    "AUTHN_DEVICE_POLL_ALL",
    "AUTHN_DEVICE_START_ALL",
    "AUTHN_EXCHANGE_KEYS_KEY",
    "AUTHN_FETCH_LEASE_KEY",
    "AUTHN_JWKS_MISSED",
    "AUTHN_JWKS_REFRESH",
    "AUTHN_SIGNING_KEYS_KEY",
    "AUTHN_TOKEN_EXCHANGE_ALL",
    "BUCKET_AUTHN",
    "BUCKET_AUTHN_DEVICES",
    "BUCKET_GATEWAY_TICKETS",
    "BUCKET_GROUPS",
    "BUCKET_JWKS",
    "BUCKET_NETMAPS",
    "BUCKET_PEERS",
    "BUCKET_POLICIES",
    "BUCKET_SETUP_KEYS",
    "BUCKET_USERS",
    "GATEWAY_TICKET_ALL",
    "HEARTBEAT_ALL",
    "JWKS_KEY",
    "NETMAP_ALL",
    "NETMAP_SNAPSHOTS_ALL",
    "POLICY_MEMBERS",
    "POLICY_META",
    "RECORDINGS_STREAM",
    "RECORDINGS_SUBJECTS",
    "STATE_BUCKETS",
    "audit_event",
    "device_code_key",
    "device_poll",
    "device_start",
    "gateway_ticket",
    "gateway_ticket_key",
    "heartbeat",
    "netmap_key",
    "netmap_snapshot_key",
    "netmap_snapshots",
    "recording",
    "recording_any_peer",
    "recordings_of",
    "sshd_sessions",
    "token",
    "user_code_key",
]

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

POLICY_META: Final = "meshssh.policy.v1.req.meta"
HEARTBEAT_ALL: Final = "meshssh.policy.v1.evt.heartbeat.*"
POLICY_MEMBERS: Final = "meshssh.policy.v1.evt.members"  # policy replicas to each other
GATEWAY_TICKET_ALL: Final = "meshssh.policy.v1.req.gateway-ticket.*"  # policy serves (issue 20)

AUTHN_JWKS_REFRESH: Final = "meshssh.authn.v1.req.jwks-refresh"
AUTHN_DEVICE_START_ALL: Final = "meshssh.authn.v1.req.device-start.*"  # authn serves
AUTHN_DEVICE_POLL_ALL: Final = "meshssh.authn.v1.req.device-poll.*"  # authn serves
AUTHN_TOKEN_EXCHANGE_ALL: Final = "meshssh.authn.v1.req.token-exchange.*"  # authn serves
AUTHN_JWKS_MISSED: Final = "meshssh.authn.v1.evt.jwks-missed"  # authn replicas to each other

AUDIT_STREAM: Final = "MESHSSH_AUDIT"
AUDIT_SUBJECTS: Final = "meshssh.audit.v1.evt.>"
AUDIT_AUTH_ACCEPTED_ALL: Final = "meshssh.audit.v1.evt.auth-accepted.*"  # policy's first logins
AUDIT_ADMIN: Final = "meshssh.audit.v1.evt.admin-change.policy"  # policy's management writes

RECORDINGS_STREAM: Final = "MESHSSH_RECORDINGS"
RECORDINGS_SUBJECTS: Final = "meshssh.rec.v1.>"

BUCKET_NETMAPS: Final = "meshssh-netmaps"
BUCKET_PEERS: Final = "meshssh-peers"
BUCKET_USERS: Final = "meshssh-users"
BUCKET_GROUPS: Final = "meshssh-groups"
BUCKET_POLICIES: Final = "meshssh-policies"
BUCKET_SETUP_KEYS: Final = "meshssh-setup-keys"
BUCKET_JWKS: Final = "meshssh-jwks"
BUCKET_AUTHN: Final = "meshssh-authn"  # authn-private: signing keys, JWKS fetch lease
BUCKET_AUTHN_DEVICES: Final = "meshssh-authn-devices"  # authn-private: device-flow grants
BUCKET_GATEWAY_TICKETS: Final = "meshssh-gateway-tickets"  # policy-private: browser tickets
AUTHN_SIGNING_KEYS_KEY: Final = "signing-keys"
AUTHN_FETCH_LEASE_KEY: Final = "jwks-fetch"
AUTHN_EXCHANGE_KEYS_KEY: Final = "exchange-keys"  # the per-peer token signing keys
STATE_BUCKETS: Final = (
    BUCKET_PEERS,
    BUCKET_USERS,
    BUCKET_GROUPS,
    BUCKET_POLICIES,
    BUCKET_SETUP_KEYS,
)

JWKS_KEY: Final = "current"
NETMAP_ALL: Final = "peer.*"
NETMAP_SNAPSHOTS_ALL: Final = "snap.>"


def token(value: str) -> str:
    """Validate one subject or key token (``[A-Za-z0-9_-]{1,64}``) and return it.

    Raises:
        BadRequest: the value would change the subject's shape (dots, wildcards, spaces...).
    """
    if not _TOKEN.fullmatch(value):  # not match: "$" also matches before a final newline
        raise BadRequest(f"invalid subject token {value!r}")
    return value


def heartbeat(peer_id: str) -> str:
    """Subject a peer publishes its liveness on."""
    return f"meshssh.policy.v1.evt.heartbeat.{token(peer_id)}"


def netmap_key(peer_id: str) -> str:
    """Key of a peer's network map in the ``meshssh-netmaps`` bucket."""
    return f"peer.{token(peer_id)}"


def netmap_snapshot_key(peer_id: str, snapshot_hash: bytes) -> str:
    """Key of one map snapshot of a peer (``meshssh-netmaps``): named by its content hash.

    Snapshots are immutable: policy writes a new one before the delta that names it, and
    removes the old one only after ``peer.<id>`` names the new one.
    """
    return f"snap.{token(peer_id)}.{snapshot_hash[:16].hex()}"


def netmap_snapshots(peer_id: str) -> str:
    """Every snapshot key of one peer (what its permissions let it read)."""
    return f"snap.{token(peer_id)}.*"


def audit_event(kind: str, peer_id: str) -> str:
    """Subject of one audit event: ``meshssh.audit.v1.evt.<kind>.<peer>``."""
    return f"meshssh.audit.v1.evt.{token(kind)}.{token(peer_id)}"


def recording(peer_id: str, session_id: str) -> str:
    """Subject of one session's recording chunks: ``meshssh.rec.v1.<peer>.<session>``."""
    return f"meshssh.rec.v1.{token(peer_id)}.{token(session_id)}"


def recordings_of(peer_id: str) -> str:
    """Every recording subject of one peer (what the peer may publish)."""
    return f"meshssh.rec.v1.{token(peer_id)}.*"


def recording_any_peer(session_id: str) -> str:
    """A session's recording subject, whichever peer recorded it."""
    return f"meshssh.rec.v1.*.{token(session_id)}"


def sshd_sessions(peer_id: str) -> str:
    """Subject sshd publishes its live sessions on (a :class:`SessionsReport`)."""
    return f"meshssh.sshd.v1.evt.sessions.{token(peer_id)}"


def device_code_key(device_hash: str) -> str:
    """Key of a device-flow grant's pointer, by the hash of its device code."""
    return f"dc.{token(device_hash)}"


def user_code_key(user_code: str) -> str:
    """Key of a device-flow grant, by its normalized user code."""
    return f"uc.{token(user_code)}"


def device_start(peer_id: str) -> str:
    """Subject an SSH server starts a browser check on (its own id last: the token is for it)."""
    return f"meshssh.authn.v1.req.device-start.{token(peer_id)}"


def device_poll(peer_id: str) -> str:
    """Subject an SSH server polls its browser check on (only the peer that started it may)."""
    return f"meshssh.authn.v1.req.device-poll.{token(peer_id)}"


def token_exchange(peer_id: str) -> str:
    """Subject a peer's agent asks authn for a per-peer token on (its own id last)."""
    return f"meshssh.authn.v1.req.token-exchange.{token(peer_id)}"


def gateway_ticket(peer_id: str) -> str:
    """Subject a gateway peer redeems a browser terminal ticket on (its own id last)."""
    return f"meshssh.policy.v1.req.gateway-ticket.{token(peer_id)}"


def gateway_ticket_key(ticket_hash: str) -> str:
    """Key of a browser terminal ticket in ``meshssh-gateway-tickets``, by its hash (hex)."""
    return f"t.{token(ticket_hash)}"
