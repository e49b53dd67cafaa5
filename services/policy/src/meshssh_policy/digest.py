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

from meshssh_common import codec
from meshssh_common.wire import NetworkMap
from meshssh_common.wire.netmap import DELTA_FIELDS

__all__ = ["Digester", "Parts", "content_digest", "of_parts"]

_SIZE = 16
Parts = tuple[bytes, ...]
"""The digests of a map's content fields, in :data:`~meshssh_common.wire.netmap.DELTA_FIELDS`
order: what a map delta compares against its snapshot's."""


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

    def parts(self, netmap: NetworkMap) -> Parts:
        """The digest of each of ``netmap``'s content fields."""
        return tuple(self.part(getattr(netmap, name)) for name in DELTA_FIELDS)

    def digest(self, netmap: NetworkMap) -> bytes:
        """The digest of ``netmap``'s content (``serial`` and ``state_revisions`` ignored)."""
        return of_parts(self.parts(netmap))


def of_parts(parts: Parts) -> bytes:
    """The content digest of a map whose fields have digests ``parts``."""
    return hashlib.blake2b(b"".join(parts), digest_size=_SIZE).digest()


def content_digest(netmap: NetworkMap) -> bytes:
    """The digest of one map's content, without a memo (a map read back from KV)."""
    return Digester().digest(netmap)
