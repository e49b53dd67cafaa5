"""The in-memory mirror of the management state, fed by KV watches (one per bucket).

Every replica keeps one. REST reads are served from it; writes go to KV and come back through
the watch, so all replicas converge on the same state. ``view`` records, per bucket, the last
revision applied: it orders what two replicas have seen (see :mod:`meshssh_policy.publisher`).

Example::

    old = state.apply(subjects.BUCKET_GROUPS, "group.servers", new_group, revision=42)
    await state.wait_applied(subjects.BUCKET_GROUPS, 42)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshssh_common import subjects
from meshssh_common.errors import Unavailable
from meshssh_common.wire import JwksSnapshot
from meshssh_policy.records import (
    GroupRecord,
    PeerRecord,
    PolicyRecord,
    SetupKeyRecord,
    UserRecord,
    user_key,
)

APPLY_WAIT_S = 15.0  # read-your-writes through a stream leader election (store._OUTAGE_S)

__all__ = ["BUCKET_TYPES", "State", "dominates"]

BUCKET_TYPES: dict[str, type[Any]] = {
    subjects.BUCKET_PEERS: PeerRecord,
    subjects.BUCKET_USERS: UserRecord,
    subjects.BUCKET_GROUPS: GroupRecord,
    subjects.BUCKET_POLICIES: PolicyRecord,
    subjects.BUCKET_SETUP_KEYS: SetupKeyRecord,
    subjects.BUCKET_JWKS: JwksSnapshot,
}
"""What each watched bucket holds (``meshssh-peers`` is watched on ``peer.*`` only)."""


def dominates(a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether view ``a`` has applied at least everything view ``b`` has, bucket by bucket."""
    return all(a.get(k, 0) >= v for k, v in b.items())


@dataclass
class State:
    """Current records by id, the JWKS snapshot, and the per-bucket applied revision."""

    peers: dict[str, PeerRecord] = field(default_factory=dict)
    users: dict[str, UserRecord] = field(default_factory=dict)
    groups: dict[str, GroupRecord] = field(default_factory=dict)
    policies: dict[str, PolicyRecord] = field(default_factory=dict)
    setup_keys: dict[str, SetupKeyRecord] = field(default_factory=dict)
    jwks: JwksSnapshot | None = None
    view: dict[str, int] = field(default_factory=dict)
    _user_ids: dict[str, str] = field(default_factory=dict)  # user KV key -> user id
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def _table(self, bucket: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            subjects.BUCKET_PEERS: self.peers,
            subjects.BUCKET_USERS: self.users,
            subjects.BUCKET_GROUPS: self.groups,
            subjects.BUCKET_POLICIES: self.policies,
            subjects.BUCKET_SETUP_KEYS: self.setup_keys,
        }
        return tables[bucket]

    def apply(self, bucket: str, key: str, value: Any | None, revision: int) -> Any | None:
        """Apply one watch event; returns the record it replaced (None if there was none).

        ``key`` is the KV key (``group.servers``); records are kept under their own id.
        """
        if revision > self.view.get(bucket, 0):
            self.view[bucket] = revision
        if bucket == subjects.BUCKET_JWKS:
            if key != subjects.JWKS_KEY:
                return None
            old_jwks, self.jwks = self.jwks, value
            return old_jwks
        table = self._table(bucket)
        record_id = value.id if value is not None else self._id_for_key(bucket, key)
        old = table.get(record_id) if record_id is not None else None
        if value is not None:
            table[value.id] = value
            if bucket == subjects.BUCKET_USERS:
                self._user_ids[user_key(value.id)] = value.id
        elif record_id is not None:
            table.pop(record_id, None)
        return old

    def holds(self, bucket: str, key: str) -> bool:
        """Whether the record stored under KV ``key`` of ``bucket`` is in the state."""
        if bucket == subjects.BUCKET_USERS:
            return key in self._user_ids
        if bucket == subjects.BUCKET_JWKS:
            return self.jwks is not None
        return key.split(".", 1)[-1] in self._table(bucket)

    def _id_for_key(self, bucket: str, key: str) -> str | None:
        if bucket == subjects.BUCKET_USERS:
            return self._user_ids.pop(key, None)  # user keys hold the id's hash
        return key.split(".", 1)[1] if "." in key else key

    async def notify(self) -> None:
        """Wake :meth:`wait_applied` callers (after a batch of events was applied)."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_applied(self, bucket: str, revision: int, timeout: float = APPLY_WAIT_S) -> None:
        """Wait until this replica has applied ``revision`` of ``bucket`` (read-your-writes).

        The default rides out a JetStream leader election (about 5 s when a NATS node dies),
        as the write before it does: the watch resumes on the new leader.

        Raises:
            Unavailable: not applied within ``timeout`` (the KV watch is behind or stopped).
        """
        await self.wait_for(lambda: self.view.get(bucket, 0) >= revision, timeout)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate`` holds after some batch was applied.

        Raises:
            Unavailable: it did not within ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError as e:
            raise Unavailable(f"the state watch did not catch up within {timeout}s") from e
