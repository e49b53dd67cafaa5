"""Exclusive claims on mesh addresses and peer names, safe across replicas.

A claim is a KV entry created with ``create`` (which fails if the key exists), so of two
peers asking for one address at the same moment exactly one wins. A claim whose holder no
longer exists and that is older than :data:`ORPHAN_AFTER` (a registration that crashed half
way) is taken over with compare-and-set.

Example::

    if not await claims.take(ip_key("100.64.0.7"), peer_id):
        raise Conflict("mesh address 100.64.0.7 is already used by another peer")
"""

from __future__ import annotations

import contextlib
import time

from meshssh_common.errors import Conflict
from meshssh_policy.records import Claim, ip_key, name_key, peer_key
from meshssh_policy.store import Store

__all__ = ["ORPHAN_AFTER", "Claims", "candidate_names"]

ORPHAN_AFTER = 30.0
_MAX_SUFFIX = 50


def candidate_names(name: str) -> list[str]:
    """``name``, then ``name-2``, ``name-3``... trimmed to a 63-character DNS label."""
    out = [name]
    for n in range(2, _MAX_SUFFIX + 1):
        suffix = f"-{n}"
        out.append(name[: 63 - len(suffix)].rstrip("-") + suffix)
    return out


class Claims:
    """Take and release address and name claims for peers."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def take(self, key: str, peer_id: str) -> bool:
        """Claim ``key`` for ``peer_id``; False when another live peer holds it."""
        claims = self.store.claims
        for _ in range(5):
            try:
                await claims.create(key, Claim(peer_id=peer_id, at=time.time()))
                return True
            except Conflict:
                entry = await claims.get(key)
            if entry is None:
                continue  # released in between: try again
            if entry.value.peer_id == peer_id:
                return True
            if await self.store.peers.get(peer_key(entry.value.peer_id)) is not None:
                return False
            if time.time() - entry.value.at < ORPHAN_AFTER:
                return False  # maybe a registration in flight
            try:
                await claims.update(
                    key, Claim(peer_id=peer_id, at=time.time()), last=entry.revision
                )
                return True
            except Conflict:
                continue
        return False

    async def release(self, key: str, peer_id: str) -> None:
        """Drop ``key`` if ``peer_id`` still holds it."""
        entry = await self.store.claims.get(key)
        if entry is not None and entry.value.peer_id == peer_id:
            # If someone took it over meanwhile, it is theirs now.
            with contextlib.suppress(Conflict):
                await self.store.claims.delete(key, last=entry.revision)

    async def take_address(self, mesh_ip: str, peer_id: str) -> bool:
        """Claim a mesh address."""
        return await self.take(ip_key(mesh_ip), peer_id)

    async def take_name(self, name: str, peer_id: str) -> str:
        """Claim ``name`` or the first free ``name-N``; returns the name taken.

        Raises:
            Conflict: every candidate is taken.
        """
        for candidate in candidate_names(name):
            if await self.take(name_key(candidate), peer_id):
                return candidate
        raise Conflict(f"peer name {name!r} and its numbered variants are all taken")

    async def release_peer(self, peer_id: str, mesh_ip: str, name: str) -> None:
        """Release a peer's address and name."""
        await self.release(ip_key(mesh_ip), peer_id)
        await self.release(name_key(name), peer_id)
