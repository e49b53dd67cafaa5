"""The inbound network ACL a peer enforces from its network map (SPEC §2).

A connection is accepted only from a source inside the mesh prefix, never from the peer's own
mesh address, and only when the map has an ``accept`` rule for the source, the protocol and
the port it arrived on, and no ``drop`` rule that matches it (drop wins; no rule means drop).

Example::

    decision = check_inbound(netmap, "100.64.0.7", 22022)
    if decision is not AclDecision.ACCEPT:
        metrics.refused.labels(reason=decision.value).inc()
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence

from meshssh_common.wire.netmap import FirewallRule, NetworkMap

__all__ = ["AclDecision", "check_inbound", "rule_matches"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AclDecision(enum.StrEnum):
    """The outcome of an inbound check; values are bounded metric labels."""

    ACCEPT = "accept"
    NO_MAP = "no_map"
    BAD_SOURCE = "bad_source"
    OUTSIDE_PREFIX = "outside_prefix"
    SELF = "self"
    NO_RULE = "no_rule"
    DROPPED = "dropped"


def _address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _port_matches(rule: FirewallRule, port: int) -> bool:
    if rule.port:
        return rule.port.isdigit() and int(rule.port) == port
    if rule.port_range is not None:
        return rule.port_range.start <= port <= rule.port_range.end
    return True  # no port and no range: every port


def rule_matches(rule: FirewallRule, source: IPAddress, port: int, protocol: str = "tcp") -> bool:
    """Whether ``rule`` covers ``source`` connecting on ``protocol``/``port``."""
    if rule.protocol not in ("all", protocol):
        return False
    if not _port_matches(rule, port):
        return False
    for prefix in rule.sources:
        try:
            if source in ipaddress.ip_network(prefix, strict=False):
                return True
        except ValueError:
            continue  # an unparsable prefix matches nothing
    return False


def check_inbound(
    netmap: NetworkMap | None, source: str, port: int, protocol: str = "tcp"
) -> AclDecision:
    """Decide whether ``source`` may connect to this peer on ``port``.

    Args:
        netmap: the peer's current map; None (not received yet) refuses everything.
        source: the source address as text (IPv4-mapped IPv6 is unwrapped).
        port: the port the connection arrived on (22 at the relay, 22022 at sshd).
        protocol: ``tcp`` for SSH.

    Returns:
        ``AclDecision.ACCEPT`` or the reason for refusing.
    """
    if netmap is None:
        return AclDecision.NO_MAP
    addr = _address(source)
    if addr is None:
        return AclDecision.BAD_SOURCE
    try:
        prefix = ipaddress.ip_network(netmap.peer.mesh_prefix, strict=False)
    except ValueError:
        return AclDecision.OUTSIDE_PREFIX
    if addr not in prefix:
        return AclDecision.OUTSIDE_PREFIX
    own = _address(netmap.peer.mesh_ip)
    if own is not None and addr == own:
        return AclDecision.SELF
    rules: Sequence[FirewallRule] = netmap.firewall_rules
    matching = [r for r in rules if rule_matches(r, addr, port, protocol)]
    if any(r.action == "drop" for r in matching):
        return AclDecision.DROPPED
    if any(r.action == "accept" for r in matching):
        return AclDecision.ACCEPT
    return AclDecision.NO_RULE
