"""Network maps computed from a state (SPEC §4, §6): authorization table, ACL, remote peers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.session_rules import rules_for
from meshssh_common.ssh_auth import authorize
from meshssh_common.wire import (
    JwksSnapshot,
    JwtConfig,
    NetworkMap,
    PeerFlags,
    PeerMeta,
    PortRange,
    SessionRules,
)
from meshssh_policy.compiler import Compiler, tombstone
from meshssh_policy.index import Index
from meshssh_policy.records import (
    GroupRecord,
    PeerRecord,
    PolicyRecord,
    RuleRecord,
    UserRecord,
)
from meshssh_policy.state import State

PREFIX = "100.64.0.0/10"


def make_state(*rules: RuleRecord, enabled: bool = True, switch: bool = True) -> State:
    """Peers: srv (servers, 100.64.0.1), lap (laptops, .2), ops (admins-peers, .3);
    users: alice (devs), bob (admins), carol (no group), dave (devs, but no user record)."""
    state = State()
    meta = PeerMeta(
        version="0.1.0", capabilities=("native_ssh",), flags=PeerFlags(server_ssh_allowed=True)
    )
    for pid, ip in (("srv", "100.64.0.1"), ("lap", "100.64.0.2"), ("ops", "100.64.0.3")):
        state.peers[pid] = PeerRecord(
            id=pid,
            name=pid,
            mesh_ip=ip,
            meta=meta,
            credential_hash="x",
            ssh_enabled=switch and pid == "srv",
            ssh_host_key=f"ssh-ed25519 KEY{pid}",
        )
    for uid in ("alice", "bob", "carol"):
        state.users[uid] = UserRecord(id=uid)
    state.groups = {
        "servers": GroupRecord(id="servers", peers=("srv",)),
        "laptops": GroupRecord(id="laptops", peers=("lap", "gone")),
        "opsbox": GroupRecord(id="opsbox", peers=("ops",)),
        "devs": GroupRecord(id="devs", users=("alice", "dave")),
        "admins": GroupRecord(id="admins", users=("bob",)),
    }
    state.policies["p1"] = PolicyRecord(id="p1", name="p1", enabled=enabled, rules=rules)
    return state


def compile_map(state: State, peer: str = "srv") -> NetworkMap:
    return Compiler(state, Index.build(state), PREFIX).compile(peer)


def tcp22(src: str = "laptops", action: str = "accept") -> RuleRecord:
    return RuleRecord(
        sources=(src,), destinations=("servers",), protocol="tcp", ports=("22",), action=action
    )  # type: ignore[arg-type]


def ssh_rule(**authorized: tuple[str, ...]) -> RuleRecord:
    return RuleRecord(
        sources=("laptops",),
        destinations=("servers",),
        protocol="ssh",
        authorized_groups=dict(authorized),
    )


# -- authorization table ---------------------------------------------------------------------


def test_a_legacy_tcp22_rule_lets_every_validated_user_in_as_any_local_user() -> None:
    table = compile_map(make_state(tcp22())).ssh_auth
    assert table.any_validated_user == ("*",)
    assert table.authorized_users == ()  # no user list: the table is the same for any users
    for user in ("alice", "bob", "carol", "dave", "never-seen-by-management"):
        for local in ("root", "deploy", "alice"):  # root: sshd's --enable-ssh-root decides
            assert authorize(table, user, local)


@pytest.mark.parametrize(
    ("rule", "opened"),
    [
        (
            RuleRecord(
                sources=("laptops",), destinations=("servers",), protocol="tcp", ports=("22",)
            ),
            True,
        ),
        (RuleRecord(sources=("laptops",), destinations=("servers",), protocol="all"), True),
        (RuleRecord(sources=("laptops",), destinations=("servers",), protocol="tcp"), True),
        (
            RuleRecord(
                sources=("laptops",),
                destinations=("servers",),
                protocol="tcp",
                port_ranges=(PortRange(start=20, end=30),),
            ),
            True,
        ),
        (
            RuleRecord(
                sources=("laptops",), destinations=("servers",), protocol="tcp", ports=("22022",)
            ),
            True,
        ),
        (
            RuleRecord(
                sources=("laptops",), destinations=("servers",), protocol="tcp", ports=("80", "443")
            ),
            False,
        ),
        (
            RuleRecord(
                sources=("laptops",),
                destinations=("servers",),
                protocol="tcp",
                port_ranges=(PortRange(start=23, end=1000),),
            ),
            False,
        ),
        (
            RuleRecord(
                sources=("laptops",), destinations=("servers",), protocol="udp", ports=("22",)
            ),
            False,
        ),
        (RuleRecord(sources=("laptops",), destinations=("servers",), protocol="icmp"), False),
        (
            RuleRecord(
                sources=("laptops",),
                destinations=("servers",),
                protocol="tcp",
                ports=("22",),
                action="drop",
            ),
            False,
        ),
        (RuleRecord(sources=("laptops",), destinations=("servers",), protocol="ssh"), False),
        (
            RuleRecord(
                sources=("laptops",),
                destinations=("servers",),
                protocol="ssh",
                authorized_groups={"admins": ()},
            ),
            False,
        ),
    ],
)
def test_only_accept_tcp_or_all_rules_covering_22_open_to_every_validated_user(
    rule: RuleRecord, opened: bool
) -> None:
    table = compile_map(make_state(rule)).ssh_auth
    assert (table.any_validated_user == ("*",)) is opened
    assert authorize(table, "never-seen-by-management", "deploy") is opened


def test_a_legacy_rule_grants_nothing_when_the_admin_switch_is_off() -> None:
    m = compile_map(make_state(tcp22(), switch=False))
    assert m.peer.ssh_enabled is False
    assert m.ssh_auth.authorized_users == ()
    assert m.ssh_auth.any_validated_user == ()
    assert m.peer.jwt is None


def test_a_legacy_rule_under_an_ssh_rule_with_the_switch_off_opens_nothing() -> None:
    # SSH is on through the ssh rule, but the legacy rule needs the admin switch.
    m = compile_map(make_state(tcp22(), ssh_rule(admins=()), switch=False))
    assert m.peer.ssh_enabled is True
    assert m.ssh_auth.any_validated_user == ()
    assert authorize(m.ssh_auth, "bob", "deploy")
    assert not authorize(m.ssh_auth, "alice", "deploy")


def test_a_legacy_rule_does_not_open_peers_outside_its_destinations() -> None:
    state = make_state(tcp22())
    state.peers["lap"] = msgspec.structs.replace(state.peers["lap"], ssh_enabled=True)
    m = compile_map(state, "lap")
    assert m.peer.ssh_enabled is True  # its own switch
    assert m.ssh_auth.any_validated_user == ()
    assert not authorize(m.ssh_auth, "alice", "alice")


def test_a_legacy_rule_and_an_ssh_rule_together_keep_both_grants() -> None:
    table = compile_map(make_state(tcp22(), ssh_rule(admins=("root",)))).ssh_auth
    assert table.any_validated_user == ("*",)
    assert authorize(table, "stranger", "deploy")
    assert authorize(table, "bob", "root")
    assert len(table.authorized_users) == 1


def test_adding_a_user_leaves_a_legacy_peer_s_table_unchanged() -> None:
    state = make_state(tcp22())
    before = compile_map(state)
    state.users["erin"] = UserRecord(id="erin", email="erin@example.com")
    assert compile_map(state) == before


def test_an_ssh_rule_refuses_a_validated_user_in_no_authorized_group() -> None:
    state = make_state(ssh_rule(admins=()))
    table = compile_map(state).ssh_auth
    assert table.any_validated_user == ()
    assert not authorize(table, "erin", "deploy")  # unknown to management
    state.users["erin"] = UserRecord(id="erin")
    assert not authorize(compile_map(state).ssh_auth, "erin", "deploy")  # known, no group
    state.groups["admins"] = GroupRecord(id="admins", users=("bob", "erin"))
    assert authorize(compile_map(state).ssh_auth, "erin", "deploy")  # put into the group


def test_ssh_rule_users_log_in_only_as_the_local_users_their_group_lists() -> None:
    table = compile_map(make_state(ssh_rule(admins=("root",), devs=()))).ssh_auth
    assert authorize(table, "bob", "root")
    assert not authorize(table, "bob", "deploy")  # admins: only root
    assert authorize(table, "alice", "deploy")  # devs: empty list = any local user
    assert authorize(table, "alice", "root")
    assert not authorize(table, "carol", "deploy")  # in no authorized group
    assert not authorize(table, "dave", "deploy")  # no user record


def test_an_ssh_rule_lists_users_by_hash_under_their_local_user() -> None:
    table = compile_map(make_state(ssh_rule(admins=("root", "ops")))).ssh_auth
    assert set(table.machine_users) == {"root", "ops"}
    assert len(table.authorized_users) == 1
    assert all(len(h) == 32 for h in table.authorized_users)
    assert "bob" not in str(table)


def test_an_ssh_rule_without_authorized_groups_lets_every_known_user_in_as_anyone() -> None:
    table = compile_map(make_state(ssh_rule(), switch=False)).ssh_auth
    assert set(table.machine_users) == {"*"}
    assert table.any_validated_user == ()
    assert authorize(table, "carol", "whoever")
    assert not authorize(table, "dave", "whoever")  # in a group, but no user record
    assert not authorize(table, "never-seen-by-management", "whoever")


def test_with_no_entry_a_login_is_denied() -> None:
    m = compile_map(make_state(tcp22(src="opsbox", action="drop")))
    assert m.peer.ssh_enabled is True  # the admin switch alone
    assert m.ssh_auth.authorized_users == ()
    assert not authorize(m.ssh_auth, "alice", "alice")


def test_a_disabled_policy_grants_and_allows_nothing() -> None:
    m = compile_map(make_state(ssh_rule(devs=()), enabled=False, switch=False))
    assert m.peer.ssh_enabled is False
    assert m.firewall_rules == ()
    assert not authorize(m.ssh_auth, "alice", "alice")


def test_the_table_uses_the_user_id_claim_and_the_jwt_config_from_authn() -> None:
    state = make_state(tcp22())
    jwt = JwtConfig(issuer="https://idp", audiences=("meshssh",), user_id_claim="email")
    state.jwks = JwksSnapshot(jwt=jwt)
    m = compile_map(state)
    assert m.peer.jwt == jwt
    assert m.ssh_auth.user_id_claim == "email"
    assert compile_map(state, "lap").peer.jwt is None  # SSH not enabled there


# -- SSH enabled -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "switch", "enabled"),
    [
        (tcp22(), True, True),
        (tcp22(), False, False),
        (ssh_rule(), False, True),
        (ssh_rule(), True, True),
    ],
)
def test_ssh_is_enabled_by_the_switch_or_an_ssh_rule(
    rule: RuleRecord, switch: bool, enabled: bool
) -> None:
    assert compile_map(make_state(rule, switch=switch)).peer.ssh_enabled is enabled


# -- firewall rules enforce exactly the policy ----------------------------------------------


def test_the_firewall_admits_exactly_the_source_group_on_22_and_22022() -> None:
    m = compile_map(make_state(tcp22()))
    assert check_inbound(m, "100.64.0.2", 22) is AclDecision.ACCEPT
    assert check_inbound(m, "100.64.0.2", 22022) is AclDecision.ACCEPT
    assert check_inbound(m, "100.64.0.2", 80) is AclDecision.NO_RULE
    assert check_inbound(m, "100.64.0.3", 22) is AclDecision.NO_RULE  # ops is not a source
    assert check_inbound(m, "100.64.0.2", 22, "udp") is AclDecision.NO_RULE
    assert check_inbound(m, "10.0.0.2", 22) is AclDecision.OUTSIDE_PREFIX
    assert {r.policy_id for r in m.firewall_rules} == {"p1"}


def test_a_drop_rule_wins_over_an_accept_rule() -> None:
    state = make_state(tcp22(), tcp22(action="drop"))
    assert check_inbound(compile_map(state), "100.64.0.2", 22) is AclDecision.DROPPED


def test_a_peer_is_never_its_own_source_and_dangling_members_count_for_nothing() -> None:
    rule = RuleRecord(sources=("servers", "laptops"), destinations=("servers",), protocol="all")
    m = compile_map(make_state(rule))
    assert m.firewall_rules[0].sources == ("100.64.0.2/32",)
    assert check_inbound(m, "100.64.0.1", 22) is AclDecision.SELF


def test_a_rule_whose_sources_are_empty_yields_no_firewall_rule() -> None:
    state = make_state(tcp22())
    state.groups["laptops"] = GroupRecord(id="laptops")
    assert compile_map(state).firewall_rules == ()


# -- remote peers ----------------------------------------------------------------------------


def test_remote_peers_are_the_peers_a_peer_may_reach_with_their_host_keys() -> None:
    state = make_state(tcp22())
    lap = compile_map(state, "lap")
    assert [(r.id, r.mesh_ip, r.ssh_host_key, r.ssh_enabled) for r in lap.remote_peers] == [
        ("srv", "100.64.0.1", "ssh-ed25519 KEYsrv", True)
    ]
    assert compile_map(state, "srv").remote_peers == ()  # rules are directional
    assert compile_map(state, "ops").remote_peers == ()


def test_source_peers_name_who_the_accept_rules_let_in_for_the_servers_audit() -> None:
    state = make_state(tcp22(), tcp22(src="opsbox", action="drop"))
    srv = compile_map(state)
    assert [(p.id, p.name, p.mesh_ip) for p in srv.source_peers] == [("lap", "lap", "100.64.0.2")]
    assert compile_map(state, "lap").source_peers == ()  # nothing may connect to the laptop
    assert srv.remote_peers == ()  # naming sources grants no reach


def test_a_removed_peer_gets_an_empty_map() -> None:
    state = make_state(tcp22())
    m = tombstone(state.peers["srv"], PREFIX)
    assert (m.firewall_rules, m.remote_peers, m.peer.ssh_enabled) == ((), (), False)
    assert check_inbound(m, "100.64.0.2", 22) is AclDecision.NO_RULE


def test_two_compilations_of_one_state_are_equal() -> None:
    state = make_state(ssh_rule(admins=("root",), devs=()), tcp22())
    assert compile_map(state) == compile_map(state)


# -- session rules ---------------------------------------------------------------------------


def _ssh(groups: dict[str, tuple[str, ...]], **options: Any) -> RuleRecord:
    return RuleRecord(
        sources=("laptops",),
        destinations=("servers",),
        protocol="ssh",
        authorized_groups=groups,
        **options,
    )


def test_each_grant_carries_the_strictest_rules_of_the_rules_that_grant_it() -> None:
    state = make_state(
        _ssh({"devs": ()}, recording="best_effort", idle_timeout=900, check_period=3600),
        _ssh({"devs": ("deploy",)}, recording="required", idle_timeout=300, max_session=7200),
        _ssh({"admins": ()}),  # no options: bob has no rules
    )
    table = Compiler(state, Index.build(state), PREFIX).compile("srv").ssh_auth
    assert authorize(table, "alice", "deploy")
    assert rules_for(table, "alice", "deploy") == SessionRules(
        recording="required", idle_timeout=300, max_session=7200, check_period=3600
    )
    assert rules_for(table, "alice", "web") == SessionRules(
        recording="best_effort", idle_timeout=900, check_period=3600
    )
    assert rules_for(table, "bob", "deploy") == SessionRules()
    assert "alice" not in str(table)  # keyed by the user's index, never the id


def test_a_map_without_session_options_is_unchanged() -> None:
    table = Compiler(*_built(make_state(_ssh({"devs": ()})))).compile("srv").ssh_auth
    assert (table.session_rules, table.session_grants) == ((), {})


def _built(state: State) -> tuple[State, Index, str]:
    return state, Index.build(state), PREFIX


def test_an_ssh_rule_for_every_known_user_applies_its_rules_to_each() -> None:
    state = make_state(_ssh({}, max_session=60), switch=False)
    table = Compiler(*_built(state)).compile("srv").ssh_auth
    assert rules_for(table, "carol", "x").max_session == 60
    assert rules_for(table, "dave", "x") == SessionRules()  # no user record: not let in either
