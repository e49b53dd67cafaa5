"""Signed envelopes: a map or the JWKS snapshot with its Ed25519 signature, and the pins.

The signing and checking live in :mod:`meshssh_common.signed_doc`; these are only the shapes,
here so that other messages (the registration reply) can carry :class:`Pins`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from meshssh_common.wire.base import Part, Wire

__all__ = ["BatchProof", "DocKind", "Endorsement", "Pins", "PublicKey", "SignedDoc"]

DocKind = Literal["map", "jwks"]
_Sig = Annotated[bytes, msgspec.Meta(max_length=64)]
_KeyId = Annotated[str, msgspec.Meta(max_length=64)]
_Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
PublicKey = Annotated[str, msgspec.Meta(max_length=64)]
"""A raw Ed25519 public key (32 bytes), base64url without padding."""


class Endorsement(Part, frozen=True, kw_only=True):
    """The previous key vouches for the signing key: its signature over the new public key."""

    public_key: PublicKey
    by: _KeyId
    signature: _Sig


class BatchProof(Part, frozen=True, kw_only=True):
    """Where a document sits in a batch signed once (:mod:`meshssh_common.signed_batch`).

    The signature is then over the root of a hash tree of the batch's payloads; ``path`` holds
    the sibling hashes from this document's leaf up to the root.
    """

    index: Annotated[int, msgspec.Meta(ge=0)]
    size: Annotated[int, msgspec.Meta(ge=2, le=1 << 20)]
    path: Annotated[tuple[_Hash, ...], msgspec.Meta(max_length=20)]


class SignedDoc(Wire, tag="common.signed.v1", frozen=True, kw_only=True):
    """A document (an encoded Wire message) and its Ed25519 signature."""

    kind: DocKind
    payload: bytes
    key_id: _KeyId
    signature: _Sig
    endorsement: Endorsement | None = None
    batch: BatchProof | None = None  # signed with others: the signature covers their tree


class Pins(Part, frozen=True, kw_only=True):
    """The public keys a peer trusts, per kind (``<state-dir>/pins.json``)."""

    map: tuple[PublicKey, ...] = ()
    jwks: tuple[PublicKey, ...] = ()
