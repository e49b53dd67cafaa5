r"""Signed documents: maps and the JWKS snapshot, signed with Ed25519 and checked against pins.

Once the bus is locked down only policy can write a map and only authn the JWKS document, but
a peer treats the bus as hostile: it applies a document only when its signature verifies with a
key pinned in ``<state-dir>/pins.json`` (SPEC §5). Registration and each renewal (REST, over the
management plane's authenticated channel) hand out the pins; they are written here and replaced
whole on every renewal.

The envelope (:class:`SignedDoc`) carries the payload bytes, the signing key's id and the
signature over ``b"meshssh-signed-v1\0" + kind + b"\0" + payload``; the ``kind`` separates maps
from JWKS documents, so a signature made for one is never accepted as the other. Documents
signed together (:meth:`Signer.sign_many`, policy's map writes) share one signature over
``b"meshssh-signed-batch-v1\0" + kind + b"\0" + size + root``, the root of a hash tree of their
payloads (:mod:`meshssh_common.hash_tree`); each carries its path to that root.

Rotation takes effect at once: after ``meshssh-policy init --rotate map-signing`` the signer
holds the new key and, until every peer has renewed, the previous one, which *endorses* the new
public key (:class:`Endorsement`). A verifier that pins the previous key checks the endorsement,
pins the new key for this process's lifetime, and verifies the document with it; the next
renewal writes the new key to ``pins.json`` and drops the old one.

Example::

    signer = Signer.load(bus_dir / "map-signing.pem", kind="map")
    doc = signer.sign(codec.encode(netmap))
    verifier = Verifier("map", pins.map)
    payload = verifier.open(doc)               # raises Refused(why) when it does not verify
    netmap = codec.decode(payload, NetworkMap)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal, TypeVar

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

from meshssh_common import codec
from meshssh_common.errors import ConfigError, WireError
from meshssh_common.hash_tree import build, leaf_hash, root_of
from meshssh_common.secret_files import write_secret_file
from meshssh_common.wire.signed import BatchProof, DocKind, Endorsement, Pins, SignedDoc

__all__ = [
    "PINS_FILE",
    "DocKind",
    "Endorsement",
    "PinnedVerifier",
    "Pins",
    "Refused",
    "SignedDoc",
    "Signer",
    "Verifier",
    "key_id",
    "new_signing_key",
    "read_pins",
    "write_pins",
]

PINS_FILE: Final = "pins.json"
RefuseReason = Literal["no_pins", "unknown_key", "bad_signature", "bad_endorsement", "undecodable"]
_DOMAIN: Final = b"meshssh-signed-v1\0"
_ENDORSE: Final = b"meshssh-endorse-v1\0"
_BATCH: Final = b"meshssh-signed-batch-v1\0"
T = TypeVar("T")


class Refused(WireError):
    """A document did not verify; ``why`` is the ``reason`` label of ``signed_doc_refused``.

    A :class:`WireError`, so a KV reader's ``on_bad_value`` sees it (and counts it under
    ``signed_doc_refused`` rather than ``bad_messages``); the old value stays in force.
    """

    def __init__(self, why: RefuseReason, message: str) -> None:
        super().__init__(message)
        self.why: RefuseReason = why


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _verify_key(public_key: str) -> VerifyKey:
    """A base64url raw Ed25519 public key as a verifier.

    Raises:
        ValueError: it is not 32 bytes of base64url.
    """
    try:
        return VerifyKey(_unb64(public_key))
    except (CryptoError, TypeError) as e:
        raise ValueError(f"not an Ed25519 public key: {e}") from e


def key_id(public_key: str) -> str:
    """The id of a pinned key (base64url raw): ``ed25519:`` and 16 hex of its SHA-256."""
    return "ed25519:" + hashlib.sha256(_unb64(public_key)).hexdigest()[:16]


def _message(kind: str, payload: bytes) -> bytes:
    return _DOMAIN + kind.encode() + b"\0" + payload


def _batch_message(kind: str, size: int, root: bytes) -> bytes:
    return _BATCH + kind.encode() + b"\0" + size.to_bytes(4, "big") + root


def _endorsed(kind: str, public_key: str) -> bytes:
    return _ENDORSE + kind.encode() + b"\0" + public_key.encode()


class Signer:
    """Signs documents of one kind with the current key (and endorses it with the previous)."""

    def __init__(
        self, key: Ed25519PrivateKey, *, kind: DocKind, previous: Ed25519PrivateKey | None = None
    ) -> None:
        self.kind: DocKind = kind
        self._key = key
        self.public_key = _b64(_raw(key.public_key()))
        self.key_id = key_id(self.public_key)
        self._endorsement: Endorsement | None = None
        self.previous_public_key = ""
        if previous is not None:
            prev_public = _b64(_raw(previous.public_key()))
            self.previous_public_key = prev_public
            self._endorsement = Endorsement(
                public_key=self.public_key,
                by=key_id(prev_public),
                signature=previous.sign(_endorsed(kind, self.public_key)),
            )

    @property
    def pins(self) -> tuple[str, ...]:
        """What a peer should pin now: the current key, and the previous one while it endorses."""
        if self.previous_public_key:
            return (self.public_key, self.previous_public_key)
        return (self.public_key,)

    @classmethod
    def load(cls, path: Path, *, kind: DocKind) -> Signer:
        """Load ``path`` (PKCS#8 PEM) and, when present, ``<path>.previous`` to endorse with.

        Raises:
            ConfigError: the file is missing or not an Ed25519 private key.
        """
        previous_path = path.with_name(path.name + ".previous")
        previous = _load_private(previous_path) if previous_path.exists() else None
        return cls(_load_private(path), kind=kind, previous=previous)

    def sign(self, payload: bytes) -> SignedDoc:
        """The signed envelope of ``payload``."""
        return SignedDoc(
            kind=self.kind,
            payload=payload,
            key_id=self.key_id,
            signature=self._key.sign(_message(self.kind, payload)),
            endorsement=self._endorsement,
        )

    def sign_many(self, payloads: list[bytes]) -> list[SignedDoc]:
        """The signed envelopes of ``payloads``, all under one signature (a hash tree's root).

        One payload is signed as :meth:`sign` signs it.
        """
        if len(payloads) <= 1:
            return [self.sign(p) for p in payloads]
        root, paths = build([leaf_hash(p) for p in payloads])
        signature = self._key.sign(_batch_message(self.kind, len(payloads), root))
        return [
            SignedDoc(
                kind=self.kind,
                payload=payload,
                key_id=self.key_id,
                signature=signature,
                endorsement=self._endorsement,
                batch=BatchProof(index=i, size=len(payloads), path=path),
            )
            for i, (payload, path) in enumerate(zip(payloads, paths, strict=True))
        ]


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(str(path), f"cannot load the signing key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(str(path), "not an Ed25519 private key")
    return key


def new_signing_key(path: Path, *, rotate: bool = False) -> str:
    """Write a new Ed25519 key to ``path`` (mode 0600); returns its public key (base64url).

    With ``rotate`` the current key moves to ``<path>.previous`` (replacing an older one), so
    the signer endorses the new key with it until the peers have renewed their pins.

    Raises:
        FileExistsError: ``path`` exists and ``rotate`` is false.
    """
    if path.exists():
        if not rotate:
            raise FileExistsError(f"{path} exists")
        write_secret_file(path.with_name(path.name + ".previous"), path.read_bytes())
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)
    return _b64(_raw(key.public_key()))


class Verifier:
    """Opens documents of one kind signed by a pinned key (or a key a pinned key endorsed)."""

    def __init__(self, kind: DocKind, pins: Iterable[str] = ()) -> None:
        self.kind: DocKind = kind
        # libsodium's Ed25519 (PyNaCl): it verifies in about half the time OpenSSL takes, and
        # every peer verifies every map it gets (the bench's fake peers: ~40 % of their CPU)
        self._pins: dict[str, VerifyKey] = {}
        self._endorsed: dict[str, VerifyKey] = {}
        self.replace(pins)

    @property
    def pinned(self) -> bool:
        """Whether any key is pinned (without one, every document is refused: fail closed)."""
        return bool(self._pins)

    def replace(self, pins: Iterable[str]) -> None:
        """Trust exactly ``pins`` from now on (a renewal's set; endorsed keys are forgotten).

        Raises:
            ConfigError: a pin is not a base64url raw Ed25519 public key.
        """
        found: dict[str, VerifyKey] = {}
        for pin in pins:
            try:
                found[key_id(pin)] = _verify_key(pin)
            except ValueError as e:
                raise ConfigError("pins", f"bad pinned key {pin!r}: {e}") from e
        self._pins, self._endorsed = found, {}

    def open(self, doc: SignedDoc) -> bytes:
        """The payload of ``doc`` if its signature verifies with a trusted key.

        Raises:
            Refused: no pins, a kind mismatch, an unknown key, or a bad signature/endorsement.
        """
        if not self._pins:
            raise Refused("no_pins", f"no {self.kind} signing key is pinned")
        if doc.kind != self.kind:
            raise Refused("bad_signature", f"a {doc.kind} document where a {self.kind} was due")
        key = self._pins.get(doc.key_id) or self._endorsed.get(doc.key_id)
        if key is None:
            key = self._endorse(doc)
        try:
            key.verify(_signed_message(doc), doc.signature)
        except (BadSignatureError, ValueError):
            raise Refused(
                "bad_signature", f"{self.kind} signature by {doc.key_id} is bad"
            ) from None
        return doc.payload

    def open_bytes(self, data: bytes) -> bytes:
        """Decode ``data`` as a :class:`SignedDoc` and return its payload once it verifies.

        Raises:
            Refused: the envelope does not decode, or the signature is refused.
        """
        try:
            doc = codec.decode(data, SignedDoc)
        except WireError as e:
            raise Refused("undecodable", str(e)) from e
        return self.open(doc)

    def open_as(self, data: bytes, typ: type[T]) -> T:
        """Decode ``data`` as a :class:`SignedDoc`, open it, and decode the payload as ``typ``.

        Raises:
            Refused: the envelope or the payload does not decode, or the signature is refused.
        """
        payload = self.open_bytes(data)
        try:
            return codec.decode(payload, typ)
        except WireError as e:
            raise Refused("undecodable", str(e)) from e

    def _endorse(self, doc: SignedDoc) -> VerifyKey:
        e = doc.endorsement
        if e is None or key_id(e.public_key) != doc.key_id:
            raise Refused("unknown_key", f"{self.kind} signed by unpinned key {doc.key_id}")
        by = self._pins.get(e.by)
        if by is None:
            raise Refused(
                "unknown_key", f"{self.kind} key {doc.key_id} endorsed by unpinned {e.by}"
            )
        try:
            by.verify(_endorsed(self.kind, e.public_key), e.signature)
            key = _verify_key(e.public_key)
        except (BadSignatureError, ValueError):
            raise Refused("bad_endorsement", f"bad endorsement of {doc.key_id}") from None
        self._endorsed[doc.key_id] = key
        return key


class PinnedVerifier(Verifier):
    """A :class:`Verifier` whose pins come from ``pins.json``, re-read whenever it changes.

    The agent rewrites the file at every renewal; sshd and the relay see the new pins at their
    next document without a restart (a stat per document). A missing file pins nothing.
    """

    def __init__(self, kind: DocKind, path: Path) -> None:
        super().__init__(kind)
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.reload()

    def reload(self) -> None:
        """Read the file again if it changed since the last read.

        Raises:
            ConfigError: the file exists but does not parse (the old pins stay).
        """
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return
        pins = read_pins(self.path)
        self.replace(pins.map if self.kind == "map" else pins.jwks)
        self._stamp = stamp

    def open(self, doc: SignedDoc) -> bytes:
        """:meth:`Verifier.open` after :meth:`reload` (a bad file keeps the old pins)."""
        with contextlib.suppress(ConfigError):
            self.reload()
        return super().open(doc)


def _signed_message(doc: SignedDoc) -> bytes:
    """What ``doc``'s signature covers: its payload, or the root of its batch.

    Raises:
        ValueError: its batch proof does not fit its batch (the document is refused).
    """
    if doc.batch is None:
        return _message(doc.kind, doc.payload)
    b = doc.batch
    root = root_of(leaf_hash(doc.payload), b.index, b.size, b.path)
    return _batch_message(doc.kind, b.size, root)


def read_pins(path: Path) -> Pins:
    """Read ``pins.json``; a missing file is no pins (every document refused).

    Raises:
        ConfigError: the file exists but does not parse.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Pins()
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e}") from e
    try:
        return msgspec.json.decode(data, type=Pins)
    except msgspec.MsgspecError as e:
        raise ConfigError(str(path), f"bad pins file: {e}") from e


def write_pins(path: Path, pins: Pins) -> None:
    """Write ``pins.json`` atomically (0644: the pins are public; sshd and relay read them)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.encode(pins))
    tmp.chmod(0o644)
    os.replace(tmp, path)
