"""The inbound ACL decides from the map: prefix, self, accept rules, drop wins, default deny."""

from __future__ import annotations

import pytest

from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.wire import FirewallRule, NetworkMap, PeerConfig, PortRange


def netmap(*rules: FirewallRule) -> NetworkMap:
    return NetworkMap(
        serial=1,
        peer=PeerConfig(id="p1", name="srv", mesh_ip="100.64.0.1", mesh_prefix="100.64.0.0/10"),
        firewall_rules=rules,
    )


def tcp(
    port: str = "",
    sources: tuple[str, ...] = ("100.64.0.7/32",),
    action: str = "accept",
    rng: PortRange | None = None,
    protocol: str = "tcp",
) -> FirewallRule:
    return FirewallRule(
        sources=sources,
        protocol=protocol,
        action=action,  # type: ignore[arg-type]
        policy_id="pol",
        port=port,
        port_range=rng,
    )


@pytest.mark.parametrize(
    ("rules", "source", "port", "expected"),
    [
        ((tcp("22"), tcp("22022")), "100.64.0.7", 22022, AclDecision.ACCEPT),
        ((tcp("22"),), "100.64.0.7", 22022, AclDecision.NO_RULE),
        ((tcp("22"),), "100.64.0.7", 22, AclDecision.ACCEPT),
        ((tcp("22"),), "100.64.0.8", 22, AclDecision.NO_RULE),
        ((tcp("22"),), "10.0.0.7", 22, AclDecision.OUTSIDE_PREFIX),
        ((tcp("22", ("100.64.0.1/32",)),), "100.64.0.1", 22, AclDecision.SELF),
        ((tcp(rng=PortRange(start=20, end=30)),), "100.64.0.7", 22, AclDecision.ACCEPT),
        ((tcp(rng=PortRange(start=23, end=30)),), "100.64.0.7", 22, AclDecision.NO_RULE),
        ((tcp(),), "100.64.0.7", 22022, AclDecision.ACCEPT),  # all ports
        ((tcp(protocol="all"),), "100.64.0.7", 22, AclDecision.ACCEPT),
        ((tcp("22", protocol="udp"),), "100.64.0.7", 22, AclDecision.NO_RULE),
        (
            (tcp("22", ("100.64.0.0/10",)), tcp("22", action="drop")),
            "100.64.0.7",
            22,
            AclDecision.DROPPED,
        ),
        ((tcp("22"),), "::ffff:100.64.0.7", 22, AclDecision.ACCEPT),
        ((tcp("22"),), "not-an-ip", 22, AclDecision.BAD_SOURCE),
        ((tcp("22", ("garbage",)),), "100.64.0.7", 22, AclDecision.NO_RULE),
    ],
)
def test_inbound_decisions(
    rules: tuple[FirewallRule, ...], source: str, port: int, expected: AclDecision
) -> None:
    assert check_inbound(netmap(*rules), source, port) is expected


def test_without_a_map_everything_is_refused() -> None:
    assert check_inbound(None, "100.64.0.7", 22) is AclDecision.NO_MAP
