"""Derived lookups over the state: group members, and which rules name which group.

Rebuilt after any batch that changed peers, users or groups (linear in memberships plus
rules: 35 ms for 20,000 peers); a batch that changed only policies rebuilds the rules and
shares the memberships (:meth:`Index.with_rules`, about 1 ms for 1,000 policies). Only
enabled policies contribute rules. Group members are filtered to peers and users that exist,
so a dangling id grants nothing.

Example::

    index = Index.build(state)
    index.peers_of(rule.destinations)      # frozenset of peer ids
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meshssh_policy.firewall import SSH_PORT, SSH_SERVER_PORT, rule_ports
from meshssh_policy.records import RuleRecord
from meshssh_policy.state import State

__all__ = ["Index", "RuleRef", "grants_known_users", "opens_to_validated_users"]


@dataclass(frozen=True, slots=True)
class RuleRef:
    """One rule of an enabled policy, with its position (for stable ordering and caching)."""

    policy_id: str
    position: int
    rule: RuleRecord

    @property
    def key(self) -> tuple[str, int]:
        """``(policy id, position)``: unique per rule."""
        return (self.policy_id, self.position)


def _legacy_ssh(rule: RuleRecord) -> bool:
    """A TCP/ALL rule that implies SSH: all ports, or a port or range covering 22 or 22022."""
    if rule.protocol not in ("tcp", "all"):
        return False
    ports, ranges = rule_ports(rule)
    if not ports and not ranges:
        return True
    wanted = (SSH_PORT, SSH_SERVER_PORT)
    return any(p in (str(w) for w in wanted) for p in ports) or any(
        r.start <= w <= r.end for r in ranges for w in wanted
    )


def opens_to_validated_users(rule: RuleRecord) -> bool:
    """Whether an accept rule lets every validated user log in as any local user (SPEC §6).

    True for legacy SSH-implying TCP/ALL rules, whether management knows the user or not
    (only where the destination's admin switch is on; the compiler checks). Such a rule
    does not depend on the user list, so adding a user never changes its maps.
    """
    return rule.action == "accept" and _legacy_ssh(rule)


def grants_known_users(rule: RuleRecord) -> bool:
    """Whether an accept rule authorizes every user known to management for ``*``.

    True for ``ssh`` rules without ``authorized_groups`` (NetBird's default for them); an
    ``ssh`` rule never opens to users management does not know.
    """
    return rule.action == "accept" and rule.protocol == "ssh" and not rule.authorized_groups


@dataclass
class Index:
    """Lookups the compiler and the impact analysis need; see :meth:`build`."""

    group_peers: dict[str, frozenset[str]] = field(default_factory=dict)
    group_users: dict[str, frozenset[str]] = field(default_factory=dict)
    peer_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    user_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    dest_rules: dict[str, list[RuleRef]] = field(default_factory=dict)
    src_rules: dict[str, list[RuleRef]] = field(default_factory=dict)
    authz_rules: dict[str, list[RuleRef]] = field(default_factory=dict)
    # Rules whose tables list every known user (a user added or removed changes their maps).
    all_users_rules: list[RuleRef] = field(default_factory=list)

    @classmethod
    def build(cls, state: State) -> Index:
        """Index ``state`` (groups, existing members, enabled policies' rules)."""
        index = cls()
        index._add_groups(state)
        index._add_rules(state)
        return index

    def with_rules(self, state: State) -> Index:
        """A new index: this one's groups and members, the rules of ``state``'s policies.

        For a batch that changed policies only: the memberships (the bigger half, linear in
        the peers) are shared, not rebuilt; this index is left as it was.
        """
        index = Index(
            group_peers=self.group_peers,
            group_users=self.group_users,
            peer_groups=self.peer_groups,
            user_groups=self.user_groups,
        )
        index._add_rules(state)
        return index

    def _add_groups(self, state: State) -> None:
        peer_groups: dict[str, list[str]] = {}
        user_groups: dict[str, list[str]] = {}
        for gid in sorted(state.groups):
            group = state.groups[gid]
            peers = frozenset(p for p in group.peers if p in state.peers)
            users = frozenset(u for u in group.users if u in state.users)
            self.group_peers[gid] = peers
            self.group_users[gid] = users
            for p in peers:
                peer_groups.setdefault(p, []).append(gid)
            for u in users:
                user_groups.setdefault(u, []).append(gid)
        self.peer_groups = {p: tuple(gs) for p, gs in peer_groups.items()}
        self.user_groups = {u: tuple(gs) for u, gs in user_groups.items()}

    def _add_rules(self, state: State) -> None:
        for pid in sorted(state.policies):
            policy = state.policies[pid]
            if not policy.enabled:
                continue
            for position, rule in enumerate(policy.rules):
                ref = RuleRef(pid, position, rule)
                for g in dict.fromkeys(rule.destinations):
                    self.dest_rules.setdefault(g, []).append(ref)
                for g in dict.fromkeys(rule.sources):
                    self.src_rules.setdefault(g, []).append(ref)
                if rule.protocol == "ssh" and rule.action == "accept":
                    for g in rule.authorized_groups:
                        self.authz_rules.setdefault(g, []).append(ref)
                if grants_known_users(rule):
                    self.all_users_rules.append(ref)

    def peers_of(self, groups: Iterable[str]) -> set[str]:
        """The existing peers in any of ``groups``."""
        out: set[str] = set()
        for g in groups:
            out |= self.group_peers.get(g, frozenset())
        return out

    def inbound_rules(self, peer_id: str) -> list[RuleRef]:
        """Rules whose destinations hold ``peer_id``, once each, in (policy, position) order."""
        seen: dict[tuple[str, int], RuleRef] = {}
        for g in self.peer_groups.get(peer_id, ()):
            for ref in self.dest_rules.get(g, ()):
                seen.setdefault(ref.key, ref)
        return [seen[k] for k in sorted(seen)]

    def reachers(self, peer_id: str) -> set[str]:
        """Peers that may reach ``peer_id`` (it is in their remote peers)."""
        out: set[str] = set()
        for ref in self.inbound_rules(peer_id):
            if ref.rule.action == "accept":
                out |= self.peers_of(ref.rule.sources)
        out.discard(peer_id)
        return out

    def source_dependents(self, peer_id: str) -> set[str]:
        """Peers whose firewall rules list ``peer_id`` as a source."""
        out: set[str] = set()
        for g in self.peer_groups.get(peer_id, ()):
            for ref in self.src_rules.get(g, ()):
                out |= self.peers_of(ref.rule.destinations)
        out.discard(peer_id)
        return out
