"""Secret files are 0600 from creation (never chmod-ed later) and replaced atomically; logs get
fingerprints only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshssh_common.fingerprint import fingerprint
from meshssh_common.host_keys import load_or_create_host_key
from meshssh_common.secret_files import write_secret_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_0600_from_its_first_byte_even_with_an_open_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        seen.append((os.path.basename(src), _mode(Path(src))))  # the temp file, before rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0)
    try:
        target = tmp_path / "new-dir" / "nats.creds"
        write_secret_file(target, "first")
        write_secret_file(target, b"second")
    finally:
        os.umask(old)
    assert [mode for _, mode in seen] == [0o600, 0o600]
    assert all(name.startswith(".nats.creds.") for name, _ in seen)
    assert target.read_text() == "second"
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700  # a directory it made is private too
    assert os.listdir(target.parent) == ["nats.creds"]  # no temp file left behind


def test_a_failed_write_leaves_the_old_secret_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "key"
    write_secret_file(target, "old")

    def fail(src: str | Path, dst: str | Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_secret_file(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["key"]


def test_a_wide_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not be readable by others"):
        write_secret_file(tmp_path / "x", "s", mode=0o644)


def test_a_symlink_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    # The temp name is random and opened with O_EXCL|O_NOFOLLOW: a planted link cannot
    # redirect the write; the target itself is replaced, not written through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    target = tmp_path / "secret"
    target.symlink_to(elsewhere)
    write_secret_file(target, "s3cr3t")
    assert elsewhere.read_text() == "untouched"
    assert not target.is_symlink()
    assert target.read_text() == "s3cr3t"


def test_the_host_key_is_created_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key = load_or_create_host_key(tmp_path / "sshd" / "ssh_host_ed25519_key")
    finally:
        os.umask(old)
    assert _mode(key.path) == 0o600


def test_fingerprints_name_a_secret_without_revealing_it() -> None:
    token = "tok-" + "x" * 40
    fp = fingerprint(token)
    assert fp.startswith("sha256:")
    assert len(fp) == len("sha256:") + 12
    assert "x" * 8 not in fp
    assert fingerprint(token.encode()) == fp
    assert fingerprint(token + "y") != fp
