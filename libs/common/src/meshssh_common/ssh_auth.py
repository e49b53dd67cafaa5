"""The SSH authorization table: who may log in as which local user (SPEC §6).

The management plane builds one table per peer; the SSH server checks a login against it. User
ids travel only as unkeyed BLAKE2b-128 hashes, so a map never leaks who has access.
``machine_users`` maps a local user, or ``*`` for any local user, to indexes into the hash list.
A login as local user U is allowed only when the user's index is listed under ``*`` or under
U, or when ``any_validated_user`` holds ``*`` or U: there every user whose token the validator
accepted may log in (legacy TCP/22 rules, SPEC §6), known to management or not. Anything
missing means denied: fail closed. Root is not decided here: sshd refuses it unless
``--enable-ssh-root``, whatever the table says.

The SSH server calls :func:`authorize` both at login and when a new map arrives (live
revocation), so the two can never disagree.

Example::

    table = build_table("sub", [("alice", "*"), ("bob", "deploy")])
    authorize(table, "bob", "deploy")   # True
    authorize(table, "bob", "root")     # False
    open_table = build_table("sub", [], any_validated_user=["*"])
    authorize(open_table, "anyone-the-idp-vouched-for", "deploy")   # True
    local_users_of(table, "bob")        # ("deploy",): what a login form may offer bob
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from meshssh_common.wire.netmap import SshAuth

__all__ = ["WILDCARD", "authorize", "build_table", "hash_user_id", "local_users_of"]

WILDCARD = "*"


def hash_user_id(user_id: str) -> str:
    """The unkeyed BLAKE2b-128 hash of a user id, as 32 hex characters."""
    return hashlib.blake2b(user_id.encode("utf-8"), digest_size=16).hexdigest()


def build_table(
    user_id_claim: str,
    grants: Iterable[tuple[str, str]],
    *,
    any_validated_user: Iterable[str] = (),
) -> SshAuth:
    """Build a table from ``(user_id, local_user)`` grants (``local_user`` may be ``*``).

    The result is canonical: hashes sorted, indexes sorted, no duplicates, so two builds of
    the same grants compare equal (maps are republished only when their content changes).

    Args:
        user_id_claim: the claim whose value is the user id.
        grants: ``(user id, local user or *)`` pairs.
        any_validated_user: local users (or ``*``) open to every validated user.
    """
    pairs = {(hash_user_id(uid), local) for uid, local in grants if uid and local}
    hashes = sorted({h for h, _ in pairs})
    index = {h: i for i, h in enumerate(hashes)}
    machine: dict[str, set[int]] = {}
    for h, local in pairs:
        machine.setdefault(local, set()).add(index[h])
    return SshAuth(
        user_id_claim=user_id_claim,
        authorized_users=tuple(hashes),
        machine_users={local: tuple(sorted(ix)) for local, ix in sorted(machine.items())},
        any_validated_user=tuple(sorted({local for local in any_validated_user if local})),
    )


def authorize(table: SshAuth | None, user_id: str, local_user: str) -> bool:
    """Whether ``user_id`` may log in as ``local_user`` under ``table`` (False when unsure).

    ``user_id`` must come from a token the validator accepted: a table that is open to every
    validated user says yes to any non-empty id.
    """
    if table is None or not user_id or not local_user:
        return False
    opened = table.any_validated_user
    if WILDCARD in opened or local_user in opened:
        return True
    wanted = hash_user_id(user_id)
    try:
        position = table.authorized_users.index(wanted)
    except ValueError:
        return False
    allowed = set(table.machine_users.get(WILDCARD, ())) | set(
        table.machine_users.get(local_user, ())
    )
    return position in allowed


def local_users_of(table: SshAuth | None, user_id: str) -> tuple[str, ...]:
    """The local users (``*`` for any) ``table`` names for ``user_id``, sorted; () when none.

    What a form may offer (the dashboard's terminal); each choice is still checked with
    :func:`authorize`, the one decision.
    """
    if table is None or not user_id:
        return ()
    named = set(table.any_validated_user)
    wanted = hash_user_id(user_id)
    if wanted in table.authorized_users:
        position = table.authorized_users.index(wanted)
        named |= {local for local, ix in table.machine_users.items() if position in ix}
    return tuple(sorted(local for local in named if authorize(table, user_id, local)))
