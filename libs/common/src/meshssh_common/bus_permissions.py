"""What each bus identity may publish and subscribe to (the table of docs/security.md).

Everything not allowed is refused by nats-server. Replies reach an identity only under its own
inbox prefix, ``_INBOX_<its user public key>``; :func:`meshssh_common.connection.connect_nats`
sets nats-py's ``inbox_prefix`` from the creds file, so nobody configures it. Services answer
requests through the ``resp`` permission (a reply to a message they received), never through
a publish right on other identities' inboxes.

Example::

    jwt = user_jwt(signing, user.public, name=f"peer-{pid}", account=acct,
                   permissions=peer_permissions(pid, inbox_prefix(user.public)).claims())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshssh_common import subjects

__all__ = [
    "BUCKET_BUS",
    "Permissions",
    "admin_permissions",
    "authn_permissions",
    "gateway_permissions",
    "inbox_prefix",
    "js_stream_read",
    "js_stream_write",
    "kv_stream",
    "peer_permissions",
    "policy_permissions",
]

BUCKET_BUS = "meshssh-bus"  # policy-private: the account's revocations (one writer, by CAS)


def inbox_prefix(public_key: str) -> str:
    """The inbox prefix of the identity whose user public key is ``public_key``."""
    return f"_INBOX_{public_key}"


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{bucket}"


def js_stream_write(stream: str) -> list[str]:
    """Every JetStream API call on ``stream``: create, update, info, consumers, gets, purge."""
    return [
        f"$JS.API.*.*.{stream}",
        f"$JS.API.*.*.{stream}.>",
        f"$JS.API.*.*.*.{stream}",
        f"$JS.API.*.*.*.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def js_stream_read(stream: str) -> list[str]:
    """Reading ``stream``: info, gets, and consumers of one's own (create, next, ack, delete)."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _kv_write(bucket: str) -> list[str]:
    return [*js_stream_write(kv_stream(bucket)), f"$KV.{bucket}.>"]


def _kv_read(bucket: str) -> list[str]:
    return js_stream_read(kv_stream(bucket))


_JS_COMMON = ["$JS.API.INFO", "$JS.FC.>"]  # account info; flow-control replies of push consumers


@dataclass(frozen=True)
class Permissions:
    """One identity's permissions, as the ``nats`` claims of its user JWT want them."""

    pub: list[str]
    sub: list[str]
    responds: bool = False  # may reply to requests it received (``resp``)
    pub_deny: list[str] = field(default_factory=list)
    sub_deny: list[str] = field(default_factory=list)

    def claims(self) -> dict[str, Any]:
        """``{"pub": {...}, "sub": {...}, "resp"?: {...}}`` for :func:`nats_jwt.user_jwt`."""
        out: dict[str, Any] = {
            "pub": _rule(self.pub, self.pub_deny),
            "sub": _rule(self.sub, self.sub_deny),
        }
        if self.responds:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


def _rule(allow: list[str], deny: list[str]) -> dict[str, list[str]]:
    rule: dict[str, list[str]] = {"allow": sorted(set(allow))}
    if deny:
        rule["deny"] = sorted(set(deny))
    return rule


def peer_permissions(peer_id: str, inbox: str) -> Permissions:
    """A peer (its agent, sshd and relay): its own subjects and keys, and nothing else."""
    pid = subjects.token(peer_id)
    netmap = f"$KV.{subjects.BUCKET_NETMAPS}.{subjects.netmap_key(pid)}"
    snapshot = f"$KV.{subjects.BUCKET_NETMAPS}.{subjects.netmap_snapshots(pid)}"
    jwks = f"$KV.{subjects.BUCKET_JWKS}.{subjects.JWKS_KEY}"
    return Permissions(
        pub=[
            subjects.heartbeat(pid),
            f"meshssh.audit.v1.evt.*.{pid}",
            subjects.recordings_of(pid),
            subjects.sshd_sessions(pid),
            subjects.POLICY_META,
            subjects.AUTHN_JWKS_REFRESH,
            subjects.device_start(pid),  # its own only: the browser check's token is for it
            subjects.device_poll(pid),
            subjects.token_exchange(pid),  # its own only: authn reads the requester from it
            f"$JS.API.DIRECT.GET.{kv_stream(subjects.BUCKET_NETMAPS)}.{netmap}",
            f"$JS.API.DIRECT.GET.{kv_stream(subjects.BUCKET_NETMAPS)}.{snapshot}",  # read only
            f"$JS.API.DIRECT.GET.{kv_stream(subjects.BUCKET_JWKS)}.{jwks}",
        ],
        sub=[netmap, jwks, subjects.sshd_sessions(pid), f"{subjects.token(inbox)}.>"],
    )


def gateway_permissions(peer_id: str, inbox: str) -> Permissions:
    """A gateway peer (issue 20): a peer's permissions, plus redeeming browser tickets.

    It redeems on its own ``gateway-ticket`` subject only: policy reads the requester from it.
    """
    base = peer_permissions(peer_id, inbox)
    return Permissions(pub=[*base.pub, subjects.gateway_ticket(peer_id)], sub=base.sub)


def _service(inbox: str, requests: str) -> list[str]:
    # micro: its request subjects (queue groups) and the $SRV discovery subjects
    return [requests, "$SRV.>", f"{subjects.token(inbox)}.>"]


def policy_permissions(inbox: str) -> Permissions:
    """The management plane: its state, the maps, the audit stream, heartbeats; not authn's keys."""
    pub = [*_JS_COMMON, subjects.AUDIT_ADMIN, *js_stream_write(subjects.AUDIT_STREAM)]
    pub.append(subjects.POLICY_MEMBERS)  # replicas share out the maps (ownership.py)
    pub += [
        f"$JS.API.STREAM.*.{subjects.RECORDINGS_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{subjects.RECORDINGS_STREAM}",
    ]  # create, info, read
    buckets = (*subjects.STATE_BUCKETS, subjects.BUCKET_NETMAPS, BUCKET_BUS)
    for bucket in (*buckets, subjects.BUCKET_GATEWAY_TICKETS):
        pub += _kv_write(bucket)
    pub += _kv_read(subjects.BUCKET_JWKS)
    # policy may start before authn: it creates the (empty) JWKS bucket it watches, as authn
    # would; it never writes, updates or deletes it
    pub.append(f"$JS.API.STREAM.CREATE.{kv_stream(subjects.BUCKET_JWKS)}")
    sub = [
        *_service(inbox, "meshssh.policy.v1.req.>"),
        subjects.HEARTBEAT_ALL,
        subjects.POLICY_MEMBERS,
        "meshssh.sshd.v1.evt.sessions.*",
    ]
    return Permissions(pub=pub, sub=sub, responds=True)


def authn_permissions(inbox: str) -> Permissions:
    """The authentication service: its private buckets, the JWKS it publishes, its requests."""
    pub = [*_JS_COMMON, subjects.AUTHN_JWKS_MISSED]
    for bucket in (subjects.BUCKET_AUTHN, subjects.BUCKET_AUTHN_DEVICES, subjects.BUCKET_JWKS):
        pub += _kv_write(bucket)
    sub = [*_service(inbox, "meshssh.authn.v1.req.>"), subjects.AUTHN_JWKS_MISSED]
    return Permissions(pub=pub, sub=sub, responds=True)


def admin_permissions() -> Permissions:
    """Everything in the application account: operators' scripts and tests."""
    return Permissions(pub=[">"], sub=[">"], responds=True)
