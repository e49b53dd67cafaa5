"""The authorization table: ``*`` or the exact local user, otherwise denied (fail closed)."""

from __future__ import annotations

import pytest

from meshssh_common import codec
from meshssh_common.ssh_auth import authorize, build_table, hash_user_id, local_users_of
from meshssh_common.wire import SshAuth


def test_hash_is_unkeyed_blake2b_128() -> None:
    # Vectors from coreutils: printf alice | b2sum -l 128 (and the empty string).
    assert hash_user_id("alice") == "69b5957599f918e276a3d2428acdc997"
    assert hash_user_id("") == "cae66941d9efbd404e4d88758ea67670"
    assert len(hash_user_id("x")) == 32


TABLE = build_table(
    "sub", [("alice", "*"), ("bob", "deploy"), ("carol", "deploy"), ("carol", "carol")]
)


@pytest.mark.parametrize(
    ("user", "local", "allowed"),
    [
        ("alice", "alice", True),  # wildcard
        ("alice", "root", True),  # wildcard covers any local user (root is gated elsewhere)
        ("bob", "deploy", True),
        ("bob", "bob", False),  # mapped only to deploy
        ("carol", "carol", True),
        ("carol", "deploy", True),
        ("carol", "alice", False),
        ("mallory", "deploy", False),  # hash not in the table
        ("", "deploy", False),
        ("bob", "", False),
    ],
)
def test_a_user_logs_in_only_through_wildcard_or_the_exact_local_user(
    user: str, local: str, allowed: bool
) -> None:
    assert authorize(TABLE, user, local) is allowed


def test_no_table_or_an_empty_table_denies_everyone() -> None:
    assert authorize(None, "alice", "alice") is False
    assert authorize(SshAuth(), "alice", "alice") is False


def test_a_user_mapped_only_to_alice_cannot_log_in_as_bob() -> None:
    table = build_table("sub", [("u1", "alice")])
    assert authorize(table, "u1", "alice")
    assert not authorize(table, "u1", "bob")


def test_an_index_without_a_mapping_is_denied() -> None:
    table = SshAuth(authorized_users=(hash_user_id("dave"),), machine_users={})
    assert not authorize(table, "dave", "dave")


def test_tables_are_canonical_so_equal_grants_compare_equal() -> None:
    a = build_table("sub", [("x", "*"), ("y", "u"), ("x", "*")])
    b = build_table("sub", [("y", "u"), ("x", "*")])
    assert a == b
    assert len(a.authorized_users) == 2


# -- open to every validated user (legacy TCP/22 rules) ----------------------------------------


def test_a_table_open_for_any_local_user_lets_in_every_validated_user() -> None:
    table = build_table("sub", [], any_validated_user=["*"])
    for user in ("alice", "someone-management-never-saw", "x" * 255):
        for local in ("alice", "deploy", "root"):  # root is gated by sshd, not the table
            assert authorize(table, user, local)
    assert not authorize(table, "", "deploy")  # no user id: no login
    assert not authorize(table, "alice", "")


def test_a_table_open_for_one_local_user_opens_only_that_one() -> None:
    table = build_table("sub", [("bob", "*")], any_validated_user=["deploy"])
    assert authorize(table, "stranger", "deploy")
    assert not authorize(table, "stranger", "root")
    assert not authorize(table, "stranger", "stranger")
    assert authorize(table, "bob", "root")  # the hashed grants still apply


def test_a_map_without_the_open_field_stays_closed_to_strangers() -> None:
    # What a map from before the field existed decodes to: nobody gets in that way.
    old = codec.decode(
        b'{"user_id_claim":"sub","authorized_users":["'
        + hash_user_id("bob").encode()
        + b'"],"machine_users":{"*":[0]}}',
        SshAuth,
    )
    assert old.any_validated_user == ()
    assert authorize(old, "bob", "deploy")
    assert not authorize(old, "stranger", "deploy")


def test_the_open_field_is_canonical_and_round_trips() -> None:
    a = build_table("sub", [], any_validated_user=["*", "deploy", "*", ""])
    assert a.any_validated_user == ("*", "deploy")
    assert a == build_table("sub", [], any_validated_user=["deploy", "*"])
    assert codec.decode(codec.encode(a), SshAuth) == a
    assert b"any_validated_user" not in codec.encode(build_table("sub", [("x", "*")]))


def test_local_users_of_lists_exactly_what_authorize_allows() -> None:
    table = build_table(
        "sub", [("alice", "*"), ("bob", "deploy"), ("bob", "web")], any_validated_user=["ops"]
    )
    assert local_users_of(table, "alice") == ("*", "ops")
    assert local_users_of(table, "bob") == ("deploy", "ops", "web")
    assert local_users_of(table, "carol") == ("ops",)
    assert local_users_of(build_table("sub", [("bob", "deploy")]), "carol") == ()
    assert local_users_of(None, "bob") == ()
    for user in ("alice", "bob", "carol"):
        for local in local_users_of(table, user):
            assert authorize(table, user, "root" if local == "*" else local)
