"""``meshssh-policy init``: makes the bus keys once, never overwrites them, rotates a service."""

from __future__ import annotations

from pathlib import Path

from meshssh_common.nats_jwt import read_creds
from meshssh_common.signed_doc import Signer, Verifier
from meshssh_testkit.process import run_command, script


async def test_init_writes_the_keys_once_and_rotate_gives_a_service_a_new_key(
    tmp_path: Path,
) -> None:
    bus = tmp_path / "bus"
    first = await run_command(
        script("meshssh-policy"), "init", "--dir", str(bus), "--tls-host", "127.0.0.1", timeout=30
    )
    assert first.returncode == 0, first.err
    assert "account A" in first.out
    for name in (
        "policy.creds",
        "authn.creds",
        "admin.creds",
        "system.creds",
        "ca.crt",
        "server.crt",
        "nats-auth.conf",
        "operator-signing.nk",
        "account-signing.nk",
    ):
        assert (bus / name).is_file(), name
    old = read_creds(bus / "authn.creds").public_key

    again = await run_command(script("meshssh-policy"), "init", "--dir", str(bus), timeout=30)
    assert again.returncode == 2
    assert "already holds bus keys" in again.err
    assert read_creds(bus / "authn.creds").public_key == old  # nothing overwritten

    rotated = await run_command(
        script("meshssh-policy"), "init", "--dir", str(bus), "--rotate", "authn", timeout=30
    )
    assert rotated.returncode == 0, rotated.err
    assert f"revoke {old}" in rotated.out
    assert read_creds(bus / "authn.creds").public_key != old

    bad = await run_command(
        script("meshssh-policy"),
        "init",
        "--dir",
        str(tmp_path / "none"),
        "--rotate",
        "authn",
        timeout=30,
    )
    assert bad.returncode == 2
    assert "cannot load" in bad.err


async def test_init_writes_the_document_signing_keys_and_rotates_each(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    made = await run_command(script("meshssh-policy"), "init", "--dir", str(bus), timeout=30)
    assert made.returncode == 0, made.err
    for name in ("map-signing.pem", "jwks-signing.pem"):
        assert (bus / name).stat().st_mode & 0o777 == 0o600, name
    jwks = Signer.load(bus / "jwks-signing.pem", kind="jwks")
    assert (bus / "jwks-signing.pub").read_text() == f"{jwks.public_key}\n"
    old_map = Signer.load(bus / "map-signing.pem", kind="map").public_key

    for key in ("map-signing", "jwks-signing"):
        rotated = await run_command(
            script("meshssh-policy"), "init", "--dir", str(bus), "--rotate", key, timeout=30
        )
        assert rotated.returncode == 0, rotated.err
    new_map = Signer.load(bus / "map-signing.pem", kind="map")
    assert new_map.pins == (new_map.public_key, old_map)  # the previous key endorses the new
    new_jwks = Signer.load(bus / "jwks-signing.pem", kind="jwks")
    assert new_jwks.public_key != jwks.public_key
    lines = (bus / "jwks-signing.pub").read_text().split()
    assert lines == [new_jwks.public_key, jwks.public_key]  # current first, then previous
    # a peer that pins only the old key accepts a document of the new one (endorsed)
    doc = new_map.sign(b"payload")
    assert Verifier("map", (old_map,)).open(doc) == b"payload"
