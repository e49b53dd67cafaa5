"""Signed envelopes: a map or the JWKS snapshot with its Ed25519 signature, and the pins.

The signing and checking live in :mod:`meshssh_common.signed_doc`; these are only the shapes,
here so that other messages (the registration reply) can carry :class:`Pins`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from meshssh_common.wire.base import Part, Wire

__all__ = ["DocKind", "Endorsement", "Pins", "PublicKey", "SignedDoc"]

DocKind = Literal["map", "jwks"]
_Sig = Annotated[bytes, msgspec.Meta(max_length=64)]
_KeyId = Annotated[str, msgspec.Meta(max_length=64)]
PublicKey = Annotated[str, msgspec.Meta(max_length=64)]
"""A raw Ed25519 public key (32 bytes), base64url without padding."""


class Endorsement(Part, frozen=True, kw_only=True):
    """The previous key vouches for the signing key: its signature over the new public key."""

    public_key: PublicKey
    by: _KeyId
    signature: _Sig


class SignedDoc(Wire, tag="common.signed.v1", frozen=True, kw_only=True):
    """A document (an encoded Wire message) and its Ed25519 signature."""

    kind: DocKind
    payload: bytes
    key_id: _KeyId
    signature: _Sig
    endorsement: Endorsement | None = None


class Pins(Part, frozen=True, kw_only=True):
    """The public keys a peer trusts, per kind (``<state-dir>/pins.json``)."""

    map: tuple[PublicKey, ...] = ()
    jwks: tuple[PublicKey, ...] = ()
