"""``meshssh-policy init``: makes the bus keys once, never overwrites them, rotates a service."""

from __future__ import annotations

from pathlib import Path

from meshssh_common.nats_jwt import read_creds
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
