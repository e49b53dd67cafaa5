"""The host key is created once with mode 0600 and loaded unchanged afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshssh_common.errors import ConfigError
from meshssh_common.host_keys import load_or_create_host_key
from meshssh_testkit import run_command_sync


def test_a_host_key_is_created_once_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ssh_host_ed25519_key"
    first = load_or_create_host_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.public_line.startswith("ssh-ed25519 ")
    again = load_or_create_host_key(path)
    assert again == first


def test_the_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key = load_or_create_host_key(tmp_path / "k")
    out = run_command_sync("ssh-keygen", "-l", "-f", str(tmp_path / "k"), check=True).out
    assert key.fingerprint == out.split()[1]


def test_a_world_readable_or_foreign_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_or_create_host_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="600"):
        load_or_create_host_key(path)
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not an OpenSSH private key"):
        load_or_create_host_key(path)
