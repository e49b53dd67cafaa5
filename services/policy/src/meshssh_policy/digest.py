"""Content digests of network maps, computed from their parts so shared parts hash once.

Two maps hold the same content when everything but ``serial`` and ``state_revisions`` is
equal; the publisher writes a map only when its digest differs from the stored one's. A
map of 20,000 peers can reach 100 KiB, and most of it (the remote peers, the expanded
firewall rules, the source peers) is shared by every peer with the same groups: the
:class:`~meshssh_policy.compiler.Compiler` hands those out as the same objects. So the
digest is a digest of the digests of the map's fields, and a :class:`Digester` remembers the
digest of each value the compiler declared shared (by identity, holding it so the identity
stays unique): a batch of 20,000 maps hashes each shared part once, and each peer only its
own small part. The result does not depend on the memo (a map read back from KV, whose parts
are all new objects, gives the same digest as the one just compiled).

Example::

    digester = Digester()
    digester.share(remote_peers)       # a value many maps hold: hashed once
    if digester.digest(new_map) == known.digest:
        ...  # unchanged: not encoded, signed or written
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from meshssh_common import codec
from meshssh_common.wire import NetworkMap

__all__ = ["Digester", "content_digest"]

_IGNORED = frozenset({"serial", "state_revisions"})
_FIELDS = tuple(f for f in msgspec.structs.fields(NetworkMap) if f.name not in _IGNORED)
_SIZE = 16


def _hash(value: Any) -> bytes:
    return hashlib.blake2b(codec.encode(value), digest_size=_SIZE).digest()


class Digester:
    """Content digests with a memo of the field values already hashed (one per batch)."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, bytes]] = {}

    def share(self, value: Any) -> None:
        """Remember ``value``'s digest: many maps hold this very object (kept alive here)."""
        if id(value) not in self._memo:
            self._memo[id(value)] = (value, _hash(value))

    def part(self, value: Any) -> bytes:
        """The digest of one field value (from the memo when it was shared)."""
        seen = self._memo.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        return _hash(value)

    def digest(self, netmap: NetworkMap) -> bytes:
        """The digest of ``netmap``'s content (``serial`` and ``state_revisions`` ignored)."""
        h = hashlib.blake2b(digest_size=_SIZE)
        for f in _FIELDS:
            value = getattr(netmap, f.name)
            h.update(self.part(value))
        return h.digest()


def content_digest(netmap: NetworkMap) -> bytes:
    """The digest of one map's content, without a memo (a map read back from KV)."""
    return Digester().digest(netmap)
