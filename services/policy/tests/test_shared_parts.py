"""Maps built from shared parts (compiler shapes, part digests, a rules-only index rebuild)
are the maps and digests the plain computation gives, peer by peer."""

from __future__ import annotations

import msgspec

from meshssh_common import codec
from meshssh_common.wire import NetworkMap, PeerFlags, PeerMeta
from meshssh_policy.compiler import Compiler
from meshssh_policy.digest import Digester, content_digest
from meshssh_policy.index import Index
from meshssh_policy.records import GroupRecord, PeerRecord, PolicyRecord, RuleRecord, UserRecord
from meshssh_policy.state import State

PREFIX = "100.64.0.0/10"


def _state() -> State:
    """4 groups of 3 peers; g0 reaches g1, g1 reaches g0 and itself (a peer reaches its own
    group, so it is in its own targets and sources), g2 has an ssh rule from g3; g3 is in
    g2 too for one peer (a peer in two groups)."""
    state = State()
    meta = PeerMeta(
        version="0.1.0", capabilities=("native_ssh",), flags=PeerFlags(server_ssh_allowed=True)
    )
    for i in range(12):
        pid = f"p{i}"
        state.peers[pid] = PeerRecord(
            id=pid,
            name=pid,
            mesh_ip=f"100.64.0.{i + 1}",
            meta=meta,
            credential_hash="x",
            ssh_enabled=i % 2 == 0,
            ssh_host_key=f"ssh-ed25519 KEY{i}",
        )
    for uid in ("alice", "bob"):
        state.users[uid] = UserRecord(id=uid)
    for g in range(4):
        peers = tuple(f"p{i}" for i in range(g * 3, g * 3 + 3))
        if g == 2:
            peers += ("p9",)
        state.groups[f"g{g}"] = GroupRecord(id=f"g{g}", peers=peers, users=("alice",))
    rules = {
        "a": RuleRecord(sources=("g0",), destinations=("g1",), protocol="tcp", ports=("22",)),
        "b": RuleRecord(sources=("g1",), destinations=("g0", "g1"), protocol="tcp"),
        "c": RuleRecord(
            sources=("g3",),
            destinations=("g2",),
            protocol="ssh",
            authorized_groups={"g0": ("root",)},
        ),
    }
    for pid, rule in rules.items():
        state.policies[pid] = PolicyRecord(id=pid, name=pid, rules=(rule,))
    return state


def test_every_map_and_digest_matches_a_fresh_compiler_per_peer() -> None:
    state = _state()
    index = Index.build(state)
    shared = Compiler(state, index, PREFIX)
    for pid in state.peers:
        alone = Compiler(state, index, PREFIX).compile(pid)  # a compiler that saw no other peer
        netmap = shared.compile(pid)
        assert codec.encode(netmap) == codec.encode(alone), pid
        decoded = codec.decode(codec.encode(netmap), NetworkMap)
        assert shared.digester.digest(netmap) == content_digest(decoded), pid
    reaching_itself = shared.compile("p3")  # g1 reaches g1: no entry for itself
    assert "p3" not in {r.id for r in reaching_itself.remote_peers}
    assert "p3" not in {s.id for s in reaching_itself.source_peers}
    assert all("100.64.0.4/32" not in r.sources for r in reaching_itself.firewall_rules)


def test_the_digest_ignores_serial_and_revisions_and_sees_every_other_field() -> None:
    state = _state()
    compiler = Compiler(state, Index.build(state), PREFIX)
    netmap = compiler.compile("p3")
    digest = compiler.digester.digest(netmap)
    stored = msgspec.structs.replace(netmap, serial=7, state_revisions={"meshssh-peers": 3})
    assert content_digest(stored) == digest
    for change in (
        {"remote_peers": netmap.remote_peers[1:]},
        {"firewall_rules": netmap.firewall_rules[:-1]},
        {"source_peers": ()},
        {"peer": msgspec.structs.replace(netmap.peer, name="other")},
    ):
        assert Digester().digest(msgspec.structs.replace(netmap, **change)) != digest, change


def test_a_rules_only_index_equals_a_full_rebuild() -> None:
    state = _state()
    old = Index.build(state)
    rule = RuleRecord(sources=("g2",), destinations=("g3", "g0"), protocol="udp", ports=("53",))
    state.policies["d"] = PolicyRecord(id="d", name="d", rules=(rule,))
    state.policies["a"] = msgspec.structs.replace(state.policies["a"], enabled=False)
    assert old.with_rules(state) == Index.build(state)
    assert "d" not in {r.policy_id for refs in old.dest_rules.values() for r in refs}
