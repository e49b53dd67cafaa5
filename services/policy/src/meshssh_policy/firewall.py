"""Expanding one policy rule into the inbound firewall rules of a receiving peer (SPEC §4).

Ports and port ranges expand into one :class:`FirewallRule` each; a rule with neither covers
every port. ``ssh`` rules are emitted as ``tcp`` and, without ports, mean port 22.

**The 22022 rule.** If (the receiving peer supports native SSH AND its admin ``ssh_enabled``
switch is on AND its metadata says ``server_ssh_allowed`` AND the rule is TCP) OR the rule's
protocol is ``ssh``, and the expanded rules cover port 22 (the exact port "22" or a range
containing 22) and none already covers 22022, one copy of the rule for port 22022 is added.
All-ports rules need nothing. Outside ``ssh`` rules it never applies to UDP, ICMP or ``all``.

Example::

    expand_rule(rule, "p1", ("100.64.0.7/32",), peer_ssh_ready=True)
"""

from __future__ import annotations

from meshssh_common.wire import FirewallRule, PeerMeta, PortRange
from meshssh_policy.records import PeerRecord, RuleRecord
from meshssh_policy.versions import supports_native_ssh

__all__ = [
    "SSH_PORT",
    "SSH_SERVER_PORT",
    "covers_port",
    "expand_rule",
    "peer_ssh_ready",
    "rule_ports",
]

SSH_PORT = 22
SSH_SERVER_PORT = 22022


def peer_ssh_ready(peer: PeerRecord) -> bool:
    """The receiving-peer half of the 22022 condition for TCP rules."""
    meta: PeerMeta = peer.meta
    return peer.ssh_enabled and meta.flags.server_ssh_allowed and supports_native_ssh(meta)


def rule_ports(rule: RuleRecord) -> tuple[tuple[str, ...], tuple[PortRange, ...]]:
    """The ports and ranges a rule expands to (an ``ssh`` rule without any means port 22)."""
    if rule.protocol == "ssh" and not rule.ports and not rule.port_ranges:
        return (str(SSH_PORT),), ()
    return rule.ports, rule.port_ranges


def covers_port(rule: FirewallRule, port: int) -> bool:
    """Whether an expanded rule names ``port`` exactly or by a range (not by "all ports")."""
    if rule.port:
        return rule.port == str(port)
    if rule.port_range is not None:
        return rule.port_range.start <= port <= rule.port_range.end
    return False


def expand_rule(
    rule: RuleRecord,
    policy_id: str,
    sources: tuple[str, ...],
    *,
    peer_ssh_ready: bool,
) -> tuple[FirewallRule, ...]:
    """The firewall rules ``rule`` gives the receiving peer, the 22022 copy included.

    Args:
        rule: the policy rule; the receiving peer is in one of its destination groups.
        policy_id: recorded on every rule (which policy let this in).
        sources: the source prefixes (``ip/32``), already sorted and without the receiver.
        peer_ssh_ready: :func:`peer_ssh_ready` of the receiving peer.

    Returns:
        The rules in a stable order: ports, then ranges, then the 22022 copy.
    """
    protocol = "tcp" if rule.protocol == "ssh" else rule.protocol
    base = FirewallRule(sources=sources, protocol=protocol, action=rule.action, policy_id=policy_id)
    ports, ranges = rule_ports(rule)
    if not ports and not ranges:
        return (base,)  # every port: nothing to add
    expanded = [
        *(
            FirewallRule(
                sources=sources, protocol=protocol, action=rule.action, policy_id=policy_id, port=p
            )
            for p in ports
        ),
        *(
            FirewallRule(
                sources=sources,
                protocol=protocol,
                action=rule.action,
                policy_id=policy_id,
                port_range=r,
            )
            for r in ranges
        ),
    ]
    wants_copy = rule.protocol == "ssh" or (rule.protocol == "tcp" and peer_ssh_ready)
    if (
        wants_copy
        and any(covers_port(r, SSH_PORT) for r in expanded)
        and not any(covers_port(r, SSH_SERVER_PORT) for r in expanded)
    ):
        expanded.append(
            FirewallRule(
                sources=sources,
                protocol=protocol,
                action=rule.action,
                policy_id=policy_id,
                port=str(SSH_SERVER_PORT),
            )
        )
    return tuple(expanded)
