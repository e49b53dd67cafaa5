"""Which peers a change can affect, so a change recomputes only those (SPEC §4).

Two passes per batch: :func:`affected_by` runs once with the index before the batch and once
with the index after it, so both the old and the new shape of a group or policy count. The
engine adds a second-order step itself: when a recomputed peer's public projection (its
:class:`RemotePeer` entry or its source prefix) changed, the peers that reach it or list it
as a source are recomputed too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshssh_common import subjects
from meshssh_policy.index import Index
from meshssh_policy.records import GroupRecord, PeerRecord, PolicyRecord, UserRecord

__all__ = ["Change", "affected_by"]


@dataclass(frozen=True, slots=True)
class Change:
    """One applied KV event: the record before and after (None when absent)."""

    bucket: str
    key: str
    old: Any | None
    new: Any | None


def _peer(change: Change, index: Index) -> set[str]:
    old: PeerRecord | None = change.old
    new: PeerRecord | None = change.new
    peer_id = (new or old).id  # type: ignore[union-attr]
    out = {peer_id}
    if new is None:  # removed: whoever saw it must drop it (seen through the old index)
        out |= index.reachers(peer_id) | index.source_dependents(peer_id)
    return out


def _group(change: Change, index: Index) -> set[str]:
    old: GroupRecord | None = change.old
    new: GroupRecord | None = change.new
    gid = (new or old).id  # type: ignore[union-attr]
    peers = set(old.peers if old else ()) ^ set(new.peers if new else ())
    users = set(old.users if old else ()) ^ set(new.users if new else ())
    out = set(peers)
    if peers:
        for ref in index.src_rules.get(gid, ()):
            out |= index.peers_of(ref.rule.destinations)
        for ref in index.dest_rules.get(gid, ()):
            out |= index.peers_of(ref.rule.sources)
    if users:
        for ref in index.authz_rules.get(gid, ()):
            out |= index.peers_of(ref.rule.destinations)
    return out


def _policy(change: Change, index: Index) -> set[str]:
    out: set[str] = set()
    for record in (change.old, change.new):
        policy: PolicyRecord | None = record
        if policy is None or not policy.enabled:
            continue
        for rule in policy.rules:
            out |= index.peers_of(rule.sources) | index.peers_of(rule.destinations)
    return out


def _user(change: Change, index: Index) -> set[str]:
    old: UserRecord | None = change.old
    new: UserRecord | None = change.new
    if (old is None) == (new is None):
        return set()  # email or name changed: maps carry only id hashes
    uid = (new or old).id  # type: ignore[union-attr]
    out: set[str] = set()
    for ref in index.all_users_rules:
        out |= index.peers_of(ref.rule.destinations)
    for gid in index.user_groups.get(uid, ()):
        for ref in index.authz_rules.get(gid, ()):
            out |= index.peers_of(ref.rule.destinations)
    return out


def affected_by(change: Change, index: Index, all_peers: set[str]) -> set[str]:
    """Peers whose map ``change`` may alter, judged with ``index``.

    Args:
        change: the applied event.
        index: the index before or after the batch.
        all_peers: every peer id (a new JWT config concerns every SSH-enabled peer).
    """
    if change.bucket == subjects.BUCKET_PEERS:
        return _peer(change, index)
    if change.bucket == subjects.BUCKET_GROUPS:
        return _group(change, index)
    if change.bucket == subjects.BUCKET_POLICIES:
        return _policy(change, index)
    if change.bucket == subjects.BUCKET_USERS:
        return _user(change, index)
    if change.bucket == subjects.BUCKET_JWKS:
        return set(all_peers) if change.old != change.new else set()
    return set()  # setup keys shape no map
