"""A hash tree over a batch of documents, so that one Ed25519 signature covers them all.

Policy writes up to a thousand maps for one change; signing each costs as much as building
it. With a tree, the batch's root is signed once and each document carries the sibling hashes
from its leaf to the root (``log2`` of the batch size, 32 bytes each). A verifier recomputes
the root from the document and its path and checks the one signature over it.

Leaves and inner nodes hash with different prefixes (``0x00`` and ``0x01``, as in RFC 6962),
so an inner node can never pass for a document. The tree of ``n`` leaves pairs nodes left to
right at each level; an odd last node is carried up unchanged. The index and the size fix the
shape, so a path is accepted only when it has exactly the length that shape needs.

Example::

    root, paths = build([leaf_hash(p) for p in payloads])
    assert root_of(leaf_hash(payloads[3]), 3, len(payloads), paths[3]) == root
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["build", "leaf_hash", "root_of"]

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(payload: bytes) -> bytes:
    """The leaf of one document."""
    return hashlib.blake2b(_LEAF + payload, digest_size=32).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(_NODE + left + right, digest_size=32).digest()


def build(leaves: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """The root of ``leaves`` (at least one) and, for each leaf, its path to the root.

    Raises:
        ValueError: no leaves.
    """
    if not leaves:
        raise ValueError("an empty batch has no root")
    paths: list[list[bytes]] = [[] for _ in leaves]
    level = list(leaves)
    under: list[list[int]] = [[i] for i in range(len(leaves))]  # the leaves below each node
    while len(level) > 1:
        up: list[bytes] = []
        up_under: list[list[int]] = []
        for j in range(0, len(level), 2):
            if j + 1 == len(level):  # odd last node: carried up
                up.append(level[j])
                up_under.append(under[j])
                continue
            left, right = level[j], level[j + 1]
            for i in under[j]:
                paths[i].append(right)
            for i in under[j + 1]:
                paths[i].append(left)
            up.append(_node(left, right))
            up_under.append(under[j] + under[j + 1])
        level, under = up, up_under
    return level[0], [tuple(p) for p in paths]


def root_of(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root that ``leaf`` at ``index`` of a batch of ``size`` leads to along ``path``.

    Raises:
        ValueError: the index is outside the batch, or the path is not as long as the shape
            needs.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} outside a batch of {size}")
    node, i, n, used = leaf, index, size, 0
    while n > 1:
        if i % 2 == 1 or i + 1 < n:  # a node with a sibling at this level
            if used == len(path):
                raise ValueError("the path is too short for the batch")
            sibling = path[used]
            used += 1
            node = _node(sibling, node) if i % 2 == 1 else _node(node, sibling)
        i, n = i // 2, (n + 1) // 2
    if used != len(path):
        raise ValueError("the path is too long for the batch")
    return node
