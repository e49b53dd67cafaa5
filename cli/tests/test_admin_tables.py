"""``meshctl users ls``: first seen and last login, for users added by their first login."""

from __future__ import annotations

from meshssh_cli.meshctl.tables import table, user_rows, when


def test_users_ls_shows_first_seen_and_last_login_in_utc_and_a_dash_for_never() -> None:
    users = [
        {"id": "idp|erin", "email": "erin@example.com", "name": "Erin", "groups": [],
         "first_seen": 1_700_000_000.5, "last_login": 1_700_003_600.0},
        {"id": "alice", "email": "", "name": "", "groups": ["users", "admins"],
         "first_seen": 0.0, "last_login": 0.0},
        {"id": "old", "email": "", "name": "", "groups": []},  # a policy without the fields
    ]  # fmt: skip
    text = table(*user_rows(users))
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "EMAIL", "NAME", "GROUPS", "FIRST", "SEEN", "LAST", "LOGIN"]
    assert lines[1].split() == ["idp|erin", "erin@example.com", "Erin", "-",
                                "2023-11-14", "22:13:20Z", "2023-11-14", "23:13:20Z"]  # fmt: skip
    assert lines[2].split() == ["alice", "-", "-", "users,admins", "-", "-"]
    assert lines[3].split() == ["old", "-", "-", "-", "-", "-"]


def test_a_time_that_is_not_a_positive_number_reads_never() -> None:
    assert [when(v) for v in (None, "x", -5, 0, 0.0)] == ["-"] * 5
