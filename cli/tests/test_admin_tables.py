"""``meshctl users ls``: first seen and last login, for users added by their first login."""

from __future__ import annotations

from meshssh_cli.meshctl.tables import table, user_rows, when


def test_users_ls_shows_first_seen_and_last_login_in_utc_and_a_dash_for_never() -> None:
    users = [
        {
            "id": "idp|erin",
            "email": "erin@example.com",
            "name": "Erin",
            "groups": [],
            "first_seen": 1_700_000_000.5,
            "last_login": 1_700_003_600.0,
        },
        {
            "id": "alice",
            "email": "",
            "name": "",
            "groups": ["users", "admins"],
            "first_seen": 0.0,
            "last_login": 0.0,
        },
        {"id": "old", "email": "", "name": "", "groups": []},  # a policy without the fields
    ]
    text = table(*user_rows(users))
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "EMAIL", "NAME", "GROUPS", "FIRST", "SEEN", "LAST", "LOGIN"]
    assert lines[1].split() == [
        "idp|erin",
        "erin@example.com",
        "Erin",
        "-",
        "2023-11-14",
        "22:13:20Z",
        "2023-11-14",
        "23:13:20Z",
    ]
    assert lines[2].split() == ["alice", "-", "-", "users,admins", "-", "-"]
    assert lines[3].split() == ["old", "-", "-", "-", "-", "-"]


def test_a_time_that_is_not_a_positive_number_reads_never() -> None:
    assert [when(v) for v in (None, "x", -5, 0, 0.0)] == ["-"] * 5


def test_peers_show_lists_on_flags_and_a_permit_open_list_but_not_the_default() -> None:
    from meshssh_cli.meshctl.tables import peer_detail

    base = {
        "name": "srv",
        "id": "p1",
        "mesh_ip": "100.64.0.2",
        "version": "0.1.0",
        "online": True,
        "ssh_enabled": True,
        "ssh_active": True,
        "groups": [],
        "ssh_host_key": "",
    }
    flags = {
        "server_ssh_allowed": True,
        "sftp": False,
        "jwt_cache_ttl": 60,
        "local_port_forwarding": True,
        "permit_open": ["db:5432", "[::1]:*"],
    }
    text = peer_detail({**base, "flags": flags})
    line = next(x for x in text.splitlines() if x.startswith("flags:"))
    assert "server_ssh_allowed" in line
    assert "local_port_forwarding" in line
    assert "permit-open db:5432 [::1]:*" in line
    assert "sftp" not in line
    assert "jwt_cache_ttl" not in line
    default = peer_detail({**base, "flags": {**flags, "permit_open": ["any"]}})
    assert "permit" not in default
