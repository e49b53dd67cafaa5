"""The embedded provider's users file: who may log in, their claims and password hashes.

The file is JSON, written atomically with mode 0600, and re-read when it changes on disk, so
``meshssh-authn users add`` takes effect without a restart::

    {"users": {"alice": {"email": "alice@example.com", "name": "Alice",
                         "groups": ["dev"], "password": "scrypt$15$8$1$...$..."}}}

The user name is the token's ``sub``.
"""

from __future__ import annotations

import functools
import re
import secrets
from pathlib import Path

import msgspec

from meshssh_authn.passwords import hash_password, verify_password
from meshssh_common.errors import BadRequest, ConfigError, NotFound
from meshssh_common.secret_files import write_secret_file

__all__ = ["USERNAME", "User", "UsersFile"]

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
"""Accepted user names: lowercase, safe in claims, logs and HTML."""


@functools.cache
def _dummy_hash() -> str:
    # Checked against when the name is unknown, so a wrong name costs as much time as a wrong
    # password (no user enumeration by timing): the hash of a random, discarded password.
    return hash_password(secrets.token_urlsafe(16))


class User(msgspec.Struct, frozen=True, kw_only=True):
    """One user of the embedded provider."""

    email: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()
    password: str = ""  # stored hash, see meshssh_authn.passwords


class _Doc(msgspec.Struct, kw_only=True):
    users: dict[str, User] = msgspec.field(default_factory=dict)


class UsersFile:
    """The users file at ``path``; reads are cached until the file's mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def load(self) -> dict[str, User]:
        """All users, re-reading the file if it changed; an absent file means no users.

        Raises:
            ConfigError: the file exists but is not a valid users file.
        """
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                doc = msgspec.json.decode(self.path.read_bytes(), type=_Doc)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
                raise ConfigError("--users-file", f"{self.path}: {e}") from e
            self._users, self._stamp = dict(doc.users), stamp
        return dict(self._users)

    def get(self, username: str) -> User | None:
        """The user called ``username``, or None."""
        return self.load().get(username)

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if ``password`` is theirs; None for a wrong name or password.

        Slow on purpose (scrypt), and as slow for an unknown name as for a wrong password.
        """
        user = self.get(username)
        stored = user.password if user is not None and user.password else _dummy_hash()
        ok = verify_password(password, stored)
        return user if ok and user is not None and user.password else None

    def add(self, username: str, user: User, *, replace: bool = False) -> None:
        """Add (or with ``replace``, overwrite) a user and write the file atomically.

        Raises:
            BadRequest: the name is not acceptable, or it exists and ``replace`` is False.
        """
        if not USERNAME.fullmatch(username):  # "$" alone would admit a final newline
            raise BadRequest(f"invalid user name {username!r}: use [a-z0-9._@-], up to 64")
        users = self.load()
        if username in users and not replace:
            raise BadRequest(f"user {username!r} exists; use --replace to overwrite")
        users[username] = user
        self._write(users)

    def remove(self, username: str) -> None:
        """Remove a user and write the file atomically.

        Raises:
            NotFound: there is no such user.
        """
        users = self.load()
        if users.pop(username, None) is None:
            raise NotFound(f"no user {username!r} in {self.path}")
        self._write(users)

    def _write(self, users: dict[str, User]) -> None:
        data = msgspec.json.format(msgspec.json.encode(_Doc(users=dict(sorted(users.items())))))
        write_secret_file(self.path, data + b"\n")
        self._stamp = None
