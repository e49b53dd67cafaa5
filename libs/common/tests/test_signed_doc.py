"""Signed maps and JWKS documents: what verifies, what is refused and why, and rotation."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshssh_common import codec
from meshssh_common.signed_doc import (
    PinnedVerifier,
    Refused,
    Signer,
    Verifier,
    new_signing_key,
    read_pins,
    write_pins,
)
from meshssh_common.wire import NetworkMap, PeerConfig, Pins, SignedDoc


def _map(serial: int = 1) -> NetworkMap:
    peer = PeerConfig(id="p1", name="p1", mesh_ip="127.0.0.2", mesh_prefix="127.0.0.0/8")
    return NetworkMap(serial=serial, peer=peer)


def _refusal(verifier: Verifier, data: bytes) -> str:
    with pytest.raises(Refused) as caught:
        verifier.open_as(data, NetworkMap)
    return caught.value.why


def test_a_pinned_signature_opens_to_the_same_map() -> None:
    signer = Signer(Ed25519PrivateKey.generate(), kind="map")
    data = codec.encode(signer.sign(codec.encode(_map(7))))
    assert Verifier("map", signer.pins).open_as(data, NetworkMap) == _map(7)


def test_refusals_name_their_reason() -> None:
    signer = Signer(Ed25519PrivateKey.generate(), kind="map")
    stranger = Signer(Ed25519PrivateKey.generate(), kind="map")
    doc = signer.sign(codec.encode(_map()))
    verifier = Verifier("map", signer.pins)
    assert _refusal(Verifier("map"), codec.encode(doc)) == "no_pins"
    assert _refusal(verifier, codec.encode(stranger.sign(codec.encode(_map())))) == "unknown_key"
    tampered = msgspec.structs.replace(doc, payload=codec.encode(_map(99)))
    assert _refusal(verifier, codec.encode(tampered)) == "bad_signature"
    assert _refusal(verifier, b"not json") == "undecodable"
    garbage = msgspec.structs.replace(doc, payload=b"{}")
    resigned = signer.sign(garbage.payload)
    assert _refusal(verifier, codec.encode(resigned)) == "undecodable"


def test_a_map_signature_is_never_a_jwks_signature() -> None:
    key = Ed25519PrivateKey.generate()
    map_signer, jwks_signer = Signer(key, kind="map"), Signer(key, kind="jwks")
    doc = jwks_signer.sign(codec.encode(_map()))
    forged = SignedDoc(kind="map", payload=doc.payload, key_id=doc.key_id, signature=doc.signature)
    assert _refusal(Verifier("map", map_signer.pins), codec.encode(forged)) == "bad_signature"
    assert _refusal(Verifier("map", map_signer.pins), codec.encode(doc)) == "bad_signature"


def test_rotation_is_endorsed_by_the_previous_key(tmp_path: Path) -> None:
    path = tmp_path / "map-signing.pem"
    old_public = new_signing_key(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        new_signing_key(path)
    verifier = Verifier("map", [old_public])
    new_public = new_signing_key(path, rotate=True)
    signer = Signer.load(path, kind="map")
    assert signer.pins == (new_public, old_public)
    assert verifier.open_as(codec.encode(signer.sign(codec.encode(_map()))), NetworkMap)
    # Without the endorsement the new key is unknown; with a forged one it is refused.
    bare = msgspec.structs.replace(signer.sign(b"x"), endorsement=None)
    assert _refusal(Verifier("map", [old_public]), codec.encode(bare)) == "unknown_key"
    endorsed = signer.sign(codec.encode(_map()))
    assert endorsed.endorsement is not None
    bad = msgspec.structs.replace(
        endorsed,
        endorsement=msgspec.structs.replace(endorsed.endorsement, signature=b"\0" * 64),
    )
    assert _refusal(Verifier("map", [old_public]), codec.encode(bad)) == "bad_endorsement"
    # A second rotation: the first key no longer endorses anything.
    new_signing_key(path, rotate=True)
    again = Signer.load(path, kind="map")
    assert _refusal(Verifier("map", [old_public]), codec.encode(again.sign(b"x"))) == "unknown_key"


def test_pinned_verifier_follows_the_pins_file(tmp_path: Path) -> None:
    first = Signer(Ed25519PrivateKey.generate(), kind="map")
    second = Signer(Ed25519PrivateKey.generate(), kind="map")
    path = tmp_path / "pins.json"
    verifier = PinnedVerifier("map", path)
    data = codec.encode(first.sign(codec.encode(_map())))
    assert _refusal(verifier, data) == "no_pins"
    write_pins(path, Pins(map=first.pins))
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert verifier.open_as(data, NetworkMap) == _map()
    write_pins(path, Pins(map=second.pins))
    assert _refusal(verifier, data) == "unknown_key"
    path.write_bytes(b"{broken")  # a bad file keeps the pins it had
    os.utime(path, ns=(1, 1))
    assert _refusal(verifier, data) == "unknown_key"
    assert verifier.open_as(codec.encode(second.sign(codec.encode(_map()))), NetworkMap)
    assert read_pins(tmp_path / "missing.json") == Pins()
