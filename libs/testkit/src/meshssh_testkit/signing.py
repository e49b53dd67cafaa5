"""Signing keys for tests: one map key and one JWKS key per test process, and their pins.

Tests that write a map or a JWKS snapshot into KV themselves sign it as policy and authn do
(:func:`signed_map`, :func:`signed_jwks`), and point the peer processes they start at a pins
file (:func:`write_test_pins`).

Example::

    pins = write_test_pins(tmp_path)                      # tmp_path / "pins.json"
    await kv.put(subjects.netmap_key("p1"), signed_map(netmap))
    ServiceProcess(["meshssh-sshd", "--pins", str(pins), ...])
"""

from __future__ import annotations

import functools
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshssh_common import codec
from meshssh_common.signed_doc import PINS_FILE, Signer, new_signing_key, write_pins
from meshssh_common.wire import JwksSnapshot, NetworkMap, Pins, SignedDoc

__all__ = [
    "authn_test_key",
    "jwks_signer",
    "map_signer",
    "read_jwks",
    "signed_jwks",
    "signed_map",
    "test_pins",
    "write_test_pins",
]


@functools.cache
def map_signer() -> Signer:
    """This process's test map signer (policy's role)."""
    return Signer(Ed25519PrivateKey.generate(), kind="map")


@functools.cache
def jwks_signer() -> Signer:
    """This process's test JWKS signer (authn's role)."""
    return Signer(Ed25519PrivateKey.generate(), kind="jwks")


def test_pins() -> Pins:
    """The pins of the two test signers."""
    return Pins(map=map_signer().pins, jwks=jwks_signer().pins)


def write_test_pins(directory: Path) -> Path:
    """Write ``pins.json`` for the test signers into ``directory``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PINS_FILE
    write_pins(path, test_pins())
    return path


def signed_map(netmap: NetworkMap, signer: Signer | None = None) -> bytes:
    """``netmap`` as policy stores it in KV: a signed envelope, encoded."""
    return codec.encode((signer or map_signer()).sign(codec.encode(netmap)))


def signed_jwks(snapshot: JwksSnapshot, signer: Signer | None = None) -> bytes:
    """``snapshot`` as authn stores it in KV: a signed envelope, encoded."""
    return codec.encode((signer or jwks_signer()).sign(codec.encode(snapshot)))


def authn_test_key(directory: Path) -> tuple[Path, Path]:
    """A JWKS signing key for a meshssh-authn a test starts, and a pins file that trusts it.

    Returns ``(key, pins)``: ``directory/authn-jwks.pem`` and ``directory/pins.json`` (the
    test signers' pins plus this key for JWKS), for the sshd the test points at that authn.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "authn-jwks.pem"
    public = new_signing_key(key, rotate=True)
    pins = directory / PINS_FILE
    write_pins(pins, Pins(map=map_signer().pins, jwks=(*jwks_signer().pins, public)))
    return key, pins


def read_jwks(data: bytes) -> JwksSnapshot:
    """The snapshot in a ``meshssh-jwks`` value, unverified (tests that only look)."""
    return codec.decode(codec.decode(data, SignedDoc).payload, JwksSnapshot)
