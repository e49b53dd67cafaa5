"""Durable state writes: read, change, compare-and-set, retry (SPEC §4, §5).

Every write to a state bucket goes through :meth:`Store.mutate`: it reads the entry, lets a
pure function compute the new value from the current one, and writes it only if the entry
is still at the revision it read; on a conflict it reads again and re-applies the function.
So two writers (two REST calls, two replicas, a registration and an admin) never lose an
update. After a write the caller waits until this replica's state has applied it, so a
following read sees it. While JetStream does not answer (a NATS node died and its streams
elect new leaders, 4 to 9 s) a write is retried, reading again first, for up to
``_OUTAGE_S`` seconds: a write whose ack was lost is then found in place and ``change`` sees it.

Example::

    def add_peer(group: GroupRecord | None) -> GroupRecord:
        ...
    await store.mutate(store.groups, group_key("servers"), add_peer)

The two signed buckets: maps are written signed with ``map_signer`` and read back with a
verifier of its own pins; the JWKS document is opened with the JWKS pins (``jwks-signing.pub``)
that policy also hands to peers, so policy computes maps only from a JWKS snapshot authn signed
(a refused one is counted in ``signed_doc_refused`` and the old one stays).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter

from meshssh_common import subjects
from meshssh_common.errors import Conflict, Unavailable, WireError
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import BoundLogger
from meshssh_common.map_chain import MAP_DOC
from meshssh_common.signed_doc import Refused, Signer, Verifier
from meshssh_common.wire import JwksSnapshot, MapDoc
from meshssh_policy.records import (
    Claim,
    GroupRecord,
    PeerRecord,
    PolicyRecord,
    SetupKeyRecord,
    UserRecord,
)
from meshssh_policy.state import State

__all__ = ["BadValueReporter", "Store", "bad_value_reporter", "open_store"]

T = TypeVar("T")
BadValueReporter = Callable[[str], Callable[[str, WireError], None]]
"""Given a bucket name, the callback its :class:`TypedKV` calls for an undecodable value."""
_ATTEMPTS = 50
_OUTAGE_S = 15.0  # how long a write rides out JetStream not answering (a leader election)


class _Raced(Exception):
    """A compare-and-set lost to another writer: read again and re-apply."""


class Store:
    """Typed views of the state buckets, and compare-and-set writes that wait for the watch."""

    def __init__(
        self,
        raw: dict[str, KeyValue],
        state: State,
        on_bad_value: BadValueReporter | None = None,
        *,
        map_signer: Signer,
        jwks_pins: tuple[str, ...],
    ) -> None:
        def typed(
            bucket: str,
            typ: type[T],
            signer: Signer | None = None,
            verifier: Verifier | None = None,
        ) -> TypedKV[T]:
            report = on_bad_value(bucket) if on_bad_value else None
            return TypedKV(raw[bucket], typ, on_bad_value=report, signer=signer, verifier=verifier)

        self.state = state
        self.peers = typed(subjects.BUCKET_PEERS, PeerRecord)
        self.claims = typed(subjects.BUCKET_PEERS, Claim)
        self.users = typed(subjects.BUCKET_USERS, UserRecord)
        self.groups = typed(subjects.BUCKET_GROUPS, GroupRecord)
        self.policies = typed(subjects.BUCKET_POLICIES, PolicyRecord)
        self.setup_keys = typed(subjects.BUCKET_SETUP_KEYS, SetupKeyRecord)
        self.map_signer = map_signer
        self.jwks_pins = jwks_pins
        self.jwks = typed(subjects.BUCKET_JWKS, JwksSnapshot, verifier=Verifier("jwks", jwks_pins))
        # peer.<id>: a whole map or a delta; snap.<id>.<hash>: a whole map (map_chain.py)
        self.netmaps = TypedKV[MapDoc](
            raw[subjects.BUCKET_NETMAPS],
            MAP_DOC,
            on_bad_value=on_bad_value(subjects.BUCKET_NETMAPS) if on_bad_value else None,
            signer=map_signer,
            verifier=Verifier("map", map_signer.pins),
        )
        self.bucket_of: dict[int, str] = {
            id(self.peers): subjects.BUCKET_PEERS,
            id(self.users): subjects.BUCKET_USERS,
            id(self.groups): subjects.BUCKET_GROUPS,
            id(self.policies): subjects.BUCKET_POLICIES,
            id(self.setup_keys): subjects.BUCKET_SETUP_KEYS,
        }

    def watched(self) -> dict[str, TypedKV[Any]]:
        """The buckets the engine watches, by name."""
        return {
            subjects.BUCKET_PEERS: self.peers,
            subjects.BUCKET_USERS: self.users,
            subjects.BUCKET_GROUPS: self.groups,
            subjects.BUCKET_POLICIES: self.policies,
            subjects.BUCKET_SETUP_KEYS: self.setup_keys,
            subjects.BUCKET_JWKS: self.jwks,
        }

    async def mutate(
        self,
        kv: TypedKV[T],
        key: str,
        change: Callable[[T | None], T | None],
        *,
        wait: bool = True,
    ) -> T | None:
        """Replace the value of ``key`` by ``change(current)`` with compare-and-set.

        Args:
            kv: one of this store's typed buckets.
            key: the record's key.
            change: computes the new value from the current one (None: absent); returns None
                to delete; raises a :class:`MeshError` to refuse. It may run several times.
            wait: wait until this replica's state has applied the write.

        Returns:
            The value written (None when deleted or when nothing was there to delete).

        Raises:
            Conflict: still conflicting after many attempts.
            Unavailable: KV did not answer for ``_OUTAGE_S`` seconds.
        """
        deadline = time.monotonic() + _OUTAGE_S
        attempts = 0
        while attempts < _ATTEMPTS:
            written: T | None
            try:
                written, revision = await self._write_once(kv, key, change)
            except _Raced:
                attempts += 1
                continue
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)  # a leader election: read again and retry
                continue
            if revision is None:  # nothing to delete
                return None
            if wait:
                await self._wait(kv, key, revision)
            return written
        raise Conflict(f"{key}: too many concurrent writers; try again")

    @staticmethod
    async def _write_once(
        kv: TypedKV[Any], key: str, change: Callable[[Any], Any]
    ) -> tuple[Any, int | None]:
        """One read and compare-and-set; (value written, revision: 0 deleted, None no-op).

        Raises:
            _Raced: another writer moved the entry (a refusal by ``change`` passes through).
        """
        entry = await kv.get(key)
        current = entry.value if entry is not None else None
        new = change(current)
        if new is None and entry is None:
            return None, None
        try:
            if new is None:
                assert entry is not None
                await kv.delete(key, last=entry.revision)
                return None, 0
            if entry is None:
                return new, await kv.create(key, new)
            return new, await kv.update(key, new, last=entry.revision)
        except Conflict as e:
            raise _Raced from e

    async def _wait(self, kv: TypedKV[Any], key: str, revision: int) -> None:
        bucket = self.bucket_of.get(id(kv))
        if bucket is None:
            return
        if revision:
            await self.state.wait_applied(bucket, revision)
            return
        await self.state.wait_for(lambda: not self.state.holds(bucket, key))


def bad_value_reporter(
    counter: Counter, log: BoundLogger, refused: Counter | None = None
) -> BadValueReporter:
    """Count (``bucket`` label) and log stored values that do not decode; they are skipped.

    A signed value whose signature is refused counts in ``refused`` (``kind``, ``reason``)
    instead, when given.
    """

    def for_bucket(bucket: str) -> Callable[[str, WireError], None]:
        def report(key: str, error: WireError) -> None:
            if isinstance(error, Refused) and refused is not None:
                kind = "jwks" if bucket == subjects.BUCKET_JWKS else "map"
                refused.labels(kind=kind, reason=error.why).inc()
                log.warning(
                    "refused a signed document; the old one stays in force",
                    extra={"bucket": bucket, "key": key, "reason": error.why, "error": str(error)},
                )
                return
            counter.labels(bucket=bucket).inc()
            log.error(
                "ignored undecodable stored value",
                extra={"bucket": bucket, "key": key, "error": str(error)},
            )

        return report

    return for_bucket


async def open_store(
    js: JetStreamContext,
    state: State,
    on_bad_value: BadValueReporter | None = None,
    *,
    map_signer: Signer,
    jwks_pins: tuple[str, ...],
) -> Store:
    """Open (creating with file storage if needed) every bucket policy uses.

    Its reads go to each stream's leader (``consistent``): a replica verifies what it just
    wrote (registration), which a lagging follower's direct get could not show yet.
    """
    names = (*subjects.STATE_BUCKETS, subjects.BUCKET_NETMAPS, subjects.BUCKET_JWKS)
    raw = {name: await open_bucket(js, name, consistent=True) for name in names}
    return Store(raw, state, on_bad_value, map_signer=map_signer, jwks_pins=jwks_pins)
