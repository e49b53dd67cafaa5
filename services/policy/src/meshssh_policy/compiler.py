"""Computing one peer's network map from the state and its index (SPEC §4, §6).

A :class:`Compiler` is made per batch of changes (after the index is rebuilt) and caches
what many peers share: each rule's source prefixes and expanded firewall rules, each peer's
:class:`RemotePeer` entry, the remote-peer sets of peers in the same groups, and the
authorization tables. The map it returns has ``serial`` 1; the publisher sets the real one.

What a map holds for receiving peer P:

- firewall rules: every rule of an enabled policy whose destinations hold P, sources
  expanded to the ``/32`` (``/128``) prefixes of the source groups' peers other than P,
  with the 22022 copy of :mod:`meshssh_policy.firewall`;
- remote peers: the peers P may reach (destinations of accept rules whose sources hold P),
  with the SSH and relay ports each reports in its metadata;
- source peers: the peers P's accept rules let in (id, name, address; sshd names the source
  of each connection with them in audit events);
- ``ssh_enabled``: P's admin switch, or an accept ``ssh`` rule to P;
- the JWT config from authn's snapshot, only when SSH is enabled;
- the authorization table, only when SSH is enabled (else empty: nobody may log in): legacy
  TCP/ALL rules covering 22 open it to every validated user for ``*`` (``any_validated_user``,
  where P's admin switch is on); ``ssh`` rules list their ``authorized_groups``' users by hash
  under the local users each group may use, or every known user under ``*`` when they name
  no group.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshssh_common.session_rules import NONE, attach, strictest
from meshssh_common.ssh_auth import WILDCARD, build_table
from meshssh_common.wire import (
    FirewallRule,
    NetworkMap,
    PeerConfig,
    RemotePeer,
    SessionRules,
    SourcePeer,
    SshAuth,
)
from meshssh_policy.digest import Digester
from meshssh_policy.firewall import expand_rule, peer_ssh_ready
from meshssh_policy.index import Index, RuleRef, grants_known_users, opens_to_validated_users
from meshssh_policy.records import PeerRecord, RuleRecord
from meshssh_policy.state import State

__all__ = ["Compiler", "host_prefix", "tombstone"]

Grant = tuple[str, str]
_NO_SSH = SshAuth()  # SSH off: nobody may log in


@dataclass(slots=True)
class _Shape:
    """What the maps of every peer in the same groups share (see :meth:`Compiler.compile`)."""

    refs: tuple[RuleRef, ...]  # inbound rules, in (policy, position) order
    remote_peers: tuple[RemotePeer, ...]
    target_ids: frozenset[str]
    source_peers: tuple[SourcePeer, ...]
    source_ids: frozenset[str]
    rule_members: frozenset[str]  # peers in the sources of any of refs (own firewall rules)
    firewall: dict[bool, tuple[FirewallRule, ...]] = field(default_factory=dict)  # by ready
    ssh_auth: dict[bool, SshAuth] = field(default_factory=dict)  # by the admin switch


@functools.lru_cache(maxsize=1 << 18)
def host_prefix(mesh_ip: str) -> str:
    """``100.64.0.7`` → ``100.64.0.7/32`` (``/128`` for IPv6); remembered (one per peer)."""
    addr = ipaddress.ip_address(mesh_ip)
    return f"{addr}/{addr.max_prefixlen}"


def tombstone(peer: PeerRecord, mesh_prefix: str) -> NetworkMap:
    """The map of a removed peer: nothing allowed, SSH off (fail closed)."""
    return NetworkMap(
        serial=1,
        peer=PeerConfig(id=peer.id, name=peer.name, mesh_ip=peer.mesh_ip, mesh_prefix=mesh_prefix),
    )


def _session_of(rule: RuleRecord) -> SessionRules:
    return SessionRules(
        recording=rule.recording,
        idle_timeout=rule.idle_timeout,
        max_session=rule.max_session,
        check_period=rule.check_period,
        record_input=rule.record_input,
        record_exec=rule.record_exec,
    )


class Compiler:
    """Builds maps for one consistent state; create a new one after every change."""

    def __init__(self, state: State, index: Index, mesh_prefix: str) -> None:
        self.state = state
        self.index = index
        self.mesh_prefix = mesh_prefix
        self.claim = state.jwks.jwt.user_id_claim if state.jwks is not None else "sub"
        self._sources: dict[tuple[str, int], tuple[tuple[str, ...], frozenset[str]]] = {}
        self._expanded: dict[tuple[str, int, bool], tuple[FirewallRule, ...]] = {}
        self._remote: dict[str, RemotePeer] = {}
        self._source: dict[str, SourcePeer] = {}
        self._targets: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._ssh: dict[str, bool] = {}
        self._tables: dict[tuple[frozenset[Grant], frozenset[str]], SshAuth] = {}
        self._all_users: frozenset[Grant] | None = None
        self._shapes: dict[tuple[str, ...], _Shape] = {}
        self._inbound_refs: dict[tuple[str, ...], tuple[RuleRef, ...]] = {}
        self.digester = Digester()  # knows the shared parts: a batch hashes each once

    # -- shared pieces -------------------------------------------------------------------

    def _rule_sources(self, ref: RuleRef) -> tuple[tuple[str, ...], frozenset[str]]:
        cached = self._sources.get(ref.key)
        if cached is None:
            peers = self.index.peers_of(ref.rule.sources)
            prefixes = tuple(sorted(host_prefix(self.state.peers[p].mesh_ip) for p in peers))
            cached = (prefixes, frozenset(peers))
            self._sources[ref.key] = cached
        return cached

    def ssh_enabled(self, peer_id: str) -> bool:
        """SSH enabled for a peer: its admin switch, or an accept ``ssh`` rule to it."""
        cached = self._ssh.get(peer_id)
        if cached is None:
            peer = self.state.peers[peer_id]
            cached = peer.ssh_enabled or any(
                ref.rule.protocol == "ssh" and ref.rule.action == "accept"
                for ref in self._inbound(self.index.peer_groups.get(peer_id, ()))
            )
            self._ssh[peer_id] = cached
        return cached

    def remote_entry(self, peer_id: str) -> RemotePeer:
        """How ``peer_id`` appears in other peers' maps (its public projection)."""
        entry = self._remote.get(peer_id)
        if entry is None:
            peer = self.state.peers[peer_id]
            entry = RemotePeer(
                id=peer.id,
                name=peer.name,
                mesh_ip=peer.mesh_ip,
                ssh_host_key=peer.ssh_host_key,
                ssh_enabled=self.ssh_enabled(peer_id) and peer.meta.flags.server_ssh_allowed,
                ssh_port=peer.meta.ssh_port,
                relay_port=peer.meta.relay_port,
            )
            self._remote[peer_id] = entry
        return entry

    def _targets_of(self, groups: tuple[str, ...]) -> tuple[str, ...]:
        cached = self._targets.get(groups)
        if cached is None:
            out: set[str] = set()
            for g in groups:
                for ref in self.index.src_rules.get(g, ()):
                    if ref.rule.action == "accept":
                        out |= self.index.peers_of(ref.rule.destinations)
            cached = tuple(sorted(out))
            self._targets[groups] = cached
        return cached

    def _table(self, grants: frozenset[Grant], opened: frozenset[str]) -> SshAuth:
        table = self._tables.get((grants, opened))
        if table is None:
            table = build_table(self.claim, grants, any_validated_user=opened)
            self._tables[(grants, opened)] = table
        return table

    def _every_user(self) -> frozenset[Grant]:
        if self._all_users is None:
            self._all_users = frozenset((u, WILDCARD) for u in self.state.users)
        return self._all_users

    def source_entry(self, peer_id: str) -> SourcePeer:
        """How ``peer_id`` appears among the source peers of the peers it may connect to."""
        entry = self._source.get(peer_id)
        if entry is None:
            peer = self.state.peers[peer_id]
            entry = SourcePeer(id=peer.id, name=peer.name, mesh_ip=peer.mesh_ip)
            self._source[peer_id] = entry
        return entry

    # -- one peer ------------------------------------------------------------------------

    def source_peers(self, peer_id: str, refs: Iterable[RuleRef]) -> tuple[SourcePeer, ...]:
        """The peers an accept rule among ``refs`` lets in, other than ``peer_id`` itself."""
        ids: set[str] = set()
        for ref in refs:
            if ref.rule.action == "accept":
                ids |= self._rule_sources(ref)[1]
        ids.discard(peer_id)
        return tuple(self.source_entry(p) for p in sorted(ids))

    def firewall_rules(self, peer: PeerRecord, refs: Iterable[RuleRef]) -> list[FirewallRule]:
        """The inbound rules of ``peer`` from ``refs`` (rules whose destinations hold it)."""
        ready = peer_ssh_ready(peer)
        own = host_prefix(peer.mesh_ip)
        rules: list[FirewallRule] = []
        for ref in refs:
            prefixes, members = self._rule_sources(ref)
            if peer.id in members:
                sources = tuple(p for p in prefixes if p != own)
                if sources:
                    rules += expand_rule(ref.rule, ref.policy_id, sources, peer_ssh_ready=ready)
                continue
            if not prefixes:
                continue  # no source peer: the rule admits nobody
            key = (ref.policy_id, ref.position, ready)
            expanded = self._expanded.get(key)
            if expanded is None:
                expanded = expand_rule(ref.rule, ref.policy_id, prefixes, peer_ssh_ready=ready)
                self._expanded[key] = expanded
            rules += expanded
        return rules

    def opened(self, peer: PeerRecord, refs: Iterable[RuleRef]) -> frozenset[str]:
        """Local users every validated user may log in as on ``peer`` (assumes SSH enabled).

        ``*`` when an accept legacy TCP/ALL rule covering 22 reaches ``peer`` and its admin
        switch is on (SPEC §6: for ``*``, every user whom the validator accepts).
        """
        if peer.ssh_enabled and any(opens_to_validated_users(ref.rule) for ref in refs):
            return frozenset((WILDCARD,))
        return frozenset()

    def grants(self, peer: PeerRecord, refs: Iterable[RuleRef]) -> frozenset[Grant]:
        """``(user id, local user)`` pairs ``ssh`` rules authorize on ``peer``."""
        out: set[Grant] = set()
        for ref in refs:
            rule = ref.rule
            if rule.action != "accept" or rule.protocol != "ssh":
                continue
            if grants_known_users(rule):
                out |= self._every_user()
                continue
            for gid, local_users in rule.authorized_groups.items():
                for user in self.index.group_users.get(gid, ()):
                    out.update((user, local) for local in (local_users or (WILDCARD,)))
        return frozenset(out)

    def session_rules(self, refs: Iterable[RuleRef]) -> dict[Grant, SessionRules]:
        """The strictest session rules per ``(user id, local user)`` grant of ``ssh`` rules."""
        found: dict[Grant, list[SessionRules]] = {}
        for ref in refs:
            rule = ref.rule
            if rule.action != "accept" or rule.protocol != "ssh":
                continue
            value = _session_of(rule)
            if value == NONE:
                continue
            if grants_known_users(rule):
                for grant in self._every_user():
                    found.setdefault(grant, []).append(value)
                continue
            for gid, local_users in rule.authorized_groups.items():
                for user in self.index.group_users.get(gid, ()):
                    for local in local_users or (WILDCARD,):
                        found.setdefault((user, local), []).append(value)
        return {grant: strictest(values) for grant, values in found.items()}

    def _inbound(self, groups: tuple[str, ...]) -> tuple[RuleRef, ...]:
        """The rules whose destinations hold a peer in ``groups``, in (policy, position) order."""
        cached = self._inbound_refs.get(groups)
        if cached is None:
            refs: dict[tuple[str, int], RuleRef] = {}
            for g in groups:
                for ref in self.index.dest_rules.get(g, ()):
                    refs.setdefault(ref.key, ref)
            cached = tuple(refs[k] for k in sorted(refs))
            self._inbound_refs[groups] = cached
        return cached

    def _shape(self, groups: tuple[str, ...]) -> _Shape:
        """What every peer in exactly ``groups`` shares (built once per batch)."""
        shape = self._shapes.get(groups)
        if shape is None:
            inbound = self._inbound(groups)
            targets = self._targets_of(groups)
            sources: set[str] = set()
            members: set[str] = set()
            for ref in inbound:
                in_sources = self._rule_sources(ref)[1]
                members |= in_sources
                if ref.rule.action == "accept":
                    sources |= in_sources
            shape = _Shape(
                refs=inbound,
                remote_peers=tuple(self.remote_entry(t) for t in targets),
                target_ids=frozenset(targets),
                source_peers=tuple(self.source_entry(p) for p in sorted(sources)),
                source_ids=frozenset(sources),
                rule_members=frozenset(members),
            )
            self.digester.share(shape.remote_peers)
            self.digester.share(shape.source_peers)
            self._shapes[groups] = shape
        return shape

    def _shared_firewall(self, shape: _Shape, peer: PeerRecord) -> tuple[FirewallRule, ...]:
        """The firewall rules of a peer that is a source of none of ``shape``'s rules."""
        ready = peer_ssh_ready(peer)
        rules = shape.firewall.get(ready)
        if rules is None:
            rules = tuple(self.firewall_rules(peer, shape.refs))
            shape.firewall[ready] = rules
            self.digester.share(rules)
        return rules

    def _shared_ssh_auth(self, shape: _Shape, peer: PeerRecord) -> SshAuth:
        """The authorization table of an SSH-enabled peer (it depends on its rules only)."""
        table = shape.ssh_auth.get(peer.ssh_enabled)
        if table is None:
            table = attach(
                self._table(self.grants(peer, shape.refs), self.opened(peer, shape.refs)),
                self.session_rules(shape.refs),
            )
            shape.ssh_auth[peer.ssh_enabled] = table
            self.digester.share(table)
        return table

    def compile(self, peer_id: str) -> NetworkMap:
        """The full map of an existing peer (``serial`` 1; the publisher sets it).

        The parts every peer in the same groups shares (remote peers, source peers, firewall
        rules, the authorization table) are the same objects in each of their maps; a peer
        that is itself among them gets its own copy without itself.
        """
        peer = self.state.peers[peer_id]
        shape = self._shape(self.index.peer_groups.get(peer_id, ()))
        ssh = self.ssh_enabled(peer_id)
        jwt = self.state.jwks.jwt if ssh and self.state.jwks is not None else None
        if peer_id in shape.rule_members:
            firewall = tuple(self.firewall_rules(peer, shape.refs))
        else:
            firewall = self._shared_firewall(shape, peer)
        remote = shape.remote_peers
        if peer_id in shape.target_ids:
            remote = tuple(e for e in remote if e.id != peer_id)
        source = shape.source_peers
        if peer_id in shape.source_ids:
            source = tuple(e for e in source if e.id != peer_id)
        return NetworkMap(
            serial=1,
            peer=PeerConfig(
                id=peer.id,
                name=peer.name,
                mesh_ip=peer.mesh_ip,
                mesh_prefix=self.mesh_prefix,
                ssh_enabled=ssh,
                jwt=jwt,
                ended_sessions=peer.ended_sessions,
            ),
            firewall_rules=firewall,
            remote_peers=remote,
            ssh_auth=self._shared_ssh_auth(shape, peer) if ssh else _NO_SSH,
            source_peers=source,
        )
