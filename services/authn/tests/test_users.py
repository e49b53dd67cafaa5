"""Password hashes, the users file and ``meshssh-authn users add|rm|ls``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from meshssh_authn.passwords import hash_password, verify_password
from meshssh_authn.users import User, UsersFile
from meshssh_common.errors import BadRequest, ConfigError, NotFound
from meshssh_testkit import RunResult, run_command_sync, script


def test_a_password_hash_is_salted_and_verifies_only_the_right_password() -> None:
    first = hash_password("correct horse", log2_n=10)
    second = hash_password("correct horse", log2_n=10)
    assert first != second  # fresh salt each time
    assert first.startswith("scrypt$10$8$1$")
    assert verify_password("correct horse", first)
    assert not verify_password("correct hors", first)
    assert not verify_password("", first)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "scrypt$10$8$1$salt",
        "bcrypt$10$8$1$AAAA$AAAA",
        "scrypt$99$8$1$AAAA$AAAA",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$10$8$1$!!!!$AAAA",
    ],
)
def test_a_malformed_stored_hash_never_matches(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_the_users_file_is_written_0600_and_reread_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "state" / "users.json"
    users = UsersFile(path)
    assert users.load() == {}
    users.add("alice", User(email="a@x", password=hash_password("pw-alice-1", log2_n=10)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert users.authenticate("alice", "pw-alice-1") is not None
    assert users.authenticate("alice", "wrong") is None
    assert users.authenticate("nobody", "pw-alice-1") is None
    other = UsersFile(path)  # another process's view sees the change
    other.add("bob", User(password=hash_password("pw-bob-22", log2_n=10)))
    assert set(users.load()) == {"alice", "bob"}
    with pytest.raises(BadRequest):
        users.add("alice", User())
    with pytest.raises(BadRequest):
        users.add("Not A Name", User())
    users.remove("bob")
    with pytest.raises(NotFound):
        users.remove("bob")
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        users.load()


def test_a_user_without_a_password_hash_cannot_log_in(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.json")
    users.add("svc", User(email="svc@x"))
    assert users.authenticate("svc", "") is None
    assert users.authenticate("svc", "anything") is None


def run_users(*args: str, stdin: str = "", env_file: Path | None = None) -> RunResult:
    env = dict(os.environ)
    env.pop("MESHSSH_AUTHN_USERS_FILE", None)
    if env_file is not None:
        env["MESHSSH_AUTHN_USERS_FILE"] = str(env_file)
    return run_command_sync(
        script("meshssh-authn"), "users", *args, input=stdin, env=env, replace_env=True, timeout=30
    )


def test_the_users_command_adds_lists_and_removes_users_from_scripts(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    added = run_users(
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--name",
        "Alice",
        "--group",
        "dev",
        "--group",
        "ops",
        "--generate-password",
        "--users-file",
        str(path),
    )
    assert added.returncode == 0, added.describe()
    generated = added.out.strip()
    assert len(generated) >= 16
    assert UsersFile(path).authenticate("alice", generated) is not None

    piped = run_users("add", "bob", "--password-stdin", stdin="bob-secret-pw\n", env_file=path)
    assert piped.returncode == 0, piped.describe()
    assert piped.out == ""  # a supplied password is never echoed
    assert UsersFile(path).authenticate("bob", "bob-secret-pw") is not None

    dup = run_users("add", "bob", "--password-stdin", stdin="another-pw\n", env_file=path)
    assert dup.returncode == 1
    assert "exists" in dup.err
    short = run_users("add", "carol", "--password-stdin", stdin="short\n", env_file=path)
    assert short.returncode == 2

    listed = run_users("ls", "--json", env_file=path)
    assert json.loads(listed.out) == {
        "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["dev", "ops"]},
        "bob": {"email": "", "name": "", "groups": []},
    }
    assert "scrypt" not in listed.out
    assert run_users("rm", "bob", env_file=path).returncode == 0
    assert run_users("rm", "bob", env_file=path).returncode == 1
    assert run_users("ls").returncode == 2  # no file named anywhere
