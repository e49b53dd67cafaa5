"""``meshssh-authn users add|rm|ls``: manage the embedded provider's users file from scripts.

Examples::

    meshssh-authn users add alice --email alice@example.com --group dev --generate-password
    echo "$PW" | meshssh-authn users add bob --password-stdin --users-file users.json
    meshssh-authn users ls --json
    meshssh-authn users rm bob

The file comes from ``--users-file`` or ``MESHSSH_AUTHN_USERS_FILE``. Exit codes: 0 done,
1 refused (exists, not found), 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from meshssh_authn.passwords import hash_password
from meshssh_authn.users import User, UsersFile
from meshssh_common.errors import MeshError

__all__ = ["users_main"]

_ENV = "MESHSSH_AUTHN_USERS_FILE"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshssh-authn users", description="manage the embedded provider's users file"
    )
    parser.add_argument(
        "--users-file", type=Path, default=None, help=f"the users file [env {_ENV}]"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user (or replace one with --replace)")
    add.add_argument("username")
    add.add_argument("--email", default="", help="the email claim")
    add.add_argument("--name", default="", help="the name claim (display name)")
    add.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    how = add.add_mutually_exclusive_group()
    how.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    how.add_argument(
        "--generate-password",
        action="store_true",
        help="generate a random password and print it on stdout",
    )
    add.add_argument("--replace", action="store_true", help="overwrite an existing user")
    rm = sub.add_parser("rm", help="remove a user")
    rm.add_argument("username")
    ls = sub.add_parser("ls", help="list users (never their password hashes)")
    ls.add_argument("--json", action="store_true", help="JSON output")
    for p in (add, rm, ls):
        p.add_argument("--users-file", type=Path, default=argparse.SUPPRESS, help=f"[env {_ENV}]")
    return parser


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password and whether it was generated (and must be shown)."""
    if args.generate_password:
        return secrets.token_urlsafe(18), True
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if not sys.stdin.isatty():
        raise ValueError("no terminal: use --password-stdin or --generate-password")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the passwords differ")
    return first, False


def _add(users: UsersFile, args: argparse.Namespace) -> int:
    password, generated = _read_password(args)
    if len(password) < 8:
        raise ValueError("the password needs at least 8 characters")
    user = User(
        email=args.email,
        name=args.name,
        groups=tuple(dict.fromkeys(args.group)),
        password=hash_password(password),
    )
    users.add(args.username, user, replace=args.replace)
    if generated:
        sys.stdout.write(password + "\n")
    sys.stderr.write(f"user {args.username} saved in {users.path}\n")
    return 0


def _ls(users: UsersFile, args: argparse.Namespace) -> int:
    listing = {
        name: {"email": u.email, "name": u.name, "groups": list(u.groups)}
        for name, u in sorted(users.load().items())
    }
    if args.json:
        sys.stdout.write(json.dumps(listing, indent=2) + "\n")
        return 0
    for name, info in listing.items():
        groups = ",".join(info["groups"]) or "-"
        sys.stdout.write(f"{name}\t{info['email'] or '-'}\t{groups}\t{info['name']}\n")
    return 0


def users_main(argv: Sequence[str]) -> int:
    """Run ``meshssh-authn users ...`` with ``argv`` (the words after ``users``).

    Returns:
        The process exit code.
    """
    parser = _parser()
    args = parser.parse_args(list(argv))
    path = args.users_file or (Path(os.environ[_ENV]) if os.environ.get(_ENV) else None)
    if path is None:
        sys.stderr.write(f"meshssh-authn users: give --users-file or set {_ENV}\n")
        return 2
    users = UsersFile(path)
    try:
        if args.action == "add":
            return _add(users, args)
        if args.action == "rm":
            users.remove(args.username)
            sys.stderr.write(f"user {args.username} removed from {users.path}\n")
            return 0
        return _ls(users, args)
    except ValueError as e:
        sys.stderr.write(f"meshssh-authn users: {e}\n")
        return 2
    except MeshError as e:
        sys.stderr.write(f"meshssh-authn users: {e}\n")
        return 1
