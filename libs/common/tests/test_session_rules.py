"""Session rules in the authorization table: attach, look up, combine, and the check period."""

from __future__ import annotations

import msgspec

from meshssh_common import codec
from meshssh_common.session_rules import NONE, attach, login_age_refusal, rules_for, strictest
from meshssh_common.ssh_auth import build_table
from meshssh_common.wire import NetworkMap, PeerConfig, SessionRules, SshAuth


def test_rules_follow_the_grant_and_the_wildcard_and_local_rules_combine() -> None:
    table = attach(
        build_table("sub", [("alice", "*"), ("alice", "deploy"), ("bob", "web")]),
        {
            ("alice", "*"): SessionRules(idle_timeout=900, recording="best_effort"),
            ("alice", "deploy"): SessionRules(idle_timeout=60, max_session=3600),
            ("bob", "web"): NONE,  # default rules are left out
            ("nobody", "*"): SessionRules(max_session=1),  # not in the table: left out
        },
    )
    assert rules_for(table, "alice", "deploy") == SessionRules(
        recording="best_effort", idle_timeout=60, max_session=3600
    )
    assert rules_for(table, "alice", "other").idle_timeout == 900
    assert rules_for(table, "bob", "web") == NONE
    assert rules_for(table, "nobody", "x") == NONE
    assert len(table.session_rules) == 2


def test_equal_grants_give_equal_tables_and_no_rules_leave_the_table_as_it_was() -> None:
    base = build_table("sub", [("alice", "*"), ("bob", "*")])
    same = SessionRules(check_period=60)
    one = attach(base, {("alice", "*"): same, ("bob", "*"): same})
    two = attach(base, {("bob", "*"): same, ("alice", "*"): same})
    assert one == two
    assert one.session_rules == (same,)  # shared, stored once
    assert attach(base, {}) is base
    assert codec.encode(base) == codec.encode(SshAuth(**msgspec.structs.asdict(base)))


def test_strictest_takes_the_strongest_recording_the_shortest_limit_and_any_input_switch() -> None:
    got = strictest(
        [
            SessionRules(recording="required", idle_timeout=0, max_session=100),
            SessionRules(recording="best_effort", idle_timeout=30, record_input=True),
            SessionRules(idle_timeout=10, record_exec=True, recording="best_effort"),
        ]
    )
    assert got == SessionRules(
        recording="required", idle_timeout=10, max_session=100, record_input=True, record_exec=True
    )
    assert strictest([]) == NONE


def test_a_malformed_rules_index_fails_closed_as_recording_required() -> None:
    table = msgspec.structs.replace(build_table("sub", [("alice", "*")]), session_grants={"0/*": 5})
    assert rules_for(table, "alice", "x").recording == "required"


def test_the_map_round_trips_with_rules_and_old_maps_decode_without_them() -> None:
    table = attach(build_table("sub", [("a", "*")]), {("a", "*"): SessionRules(max_session=9)})
    peer = PeerConfig(id="p", name="p", mesh_ip="100.64.0.1", mesh_prefix="100.64.0.0/10")
    netmap = NetworkMap(serial=1, peer=peer, ssh_auth=table)
    assert codec.decode(codec.encode(netmap), NetworkMap) == netmap
    old = NetworkMap(serial=1, peer=peer, ssh_auth=build_table("sub", [("a", "*")]))
    assert b"session_rules" not in codec.encode(old)  # defaults are omitted on the wire
    assert rules_for(codec.decode(codec.encode(old), NetworkMap).ssh_auth, "a", "x") == NONE


def test_the_check_period_uses_auth_time_then_iat_and_refuses_without_either() -> None:
    rules = SessionRules(check_period=60)
    now = 1_000_000.0
    assert login_age_refusal(rules, {"auth_time": now - 30, "iat": now - 500}, now=now) == ""
    assert "120 s ago" in login_age_refusal(rules, {"auth_time": now - 120, "iat": now}, now=now)
    assert login_age_refusal(rules, {"iat": now - 61}, now=now)
    assert login_age_refusal(rules, {}, now=now) == "the token says nothing of when you signed in"
    assert login_age_refusal(rules, {"auth_time": True}, now=now)
    assert login_age_refusal(NONE, {}, now=now) == ""
