"""The 22022 rule of SPEC §4, as a table over rules and receiving peers."""

from __future__ import annotations

import pytest

from meshssh_common.wire import PeerFlags, PeerMeta, PortRange
from meshssh_policy.firewall import expand_rule, peer_ssh_ready
from meshssh_policy.records import PeerRecord, RuleRecord
from meshssh_policy.versions import supports_native_ssh

SOURCES = ("100.64.0.9/32",)


def peer(
    version: str = "0.60.0",
    *,
    ssh: bool = True,
    allowed: bool = True,
    capabilities: tuple[str, ...] = (),
) -> PeerRecord:
    return PeerRecord(
        id="p1",
        name="p1",
        mesh_ip="100.64.0.1",
        credential_hash="x",
        ssh_enabled=ssh,
        meta=PeerMeta(
            version=version, capabilities=capabilities, flags=PeerFlags(server_ssh_allowed=allowed)
        ),
    )


def rule(
    protocol: str = "tcp",
    ports: tuple[str, ...] = ("22",),
    ranges: tuple[tuple[int, int], ...] = (),
) -> RuleRecord:
    return RuleRecord(
        sources=("a",),
        destinations=("b",),
        protocol=protocol,
        ports=ports,  # type: ignore[arg-type]
        port_ranges=tuple(PortRange(start=s, end=e) for s, e in ranges),
    )


def ports(r: RuleRecord, p: PeerRecord) -> list[str]:
    """The expanded rules as "proto:port" / "proto:start-end" / "proto:*"."""
    out = []
    for fw in expand_rule(r, "pol", SOURCES, peer_ssh_ready=peer_ssh_ready(p)):
        assert fw.sources == SOURCES
        assert fw.policy_id == "pol"
        if fw.port:
            out.append(f"{fw.protocol}:{fw.port}")
        elif fw.port_range is not None:
            out.append(f"{fw.protocol}:{fw.port_range.start}-{fw.port_range.end}")
        else:
            out.append(f"{fw.protocol}:*")
    return out


CASES = [
    ("added once for a TCP/22 rule", rule(), peer(), ["tcp:22", "tcp:22022"]),
    ("not for a peer at 0.59.x", rule(), peer("0.59.9"), ["tcp:22"]),
    ("not when ssh_enabled is off", rule(), peer(ssh=False), ["tcp:22"]),
    ("not when server_ssh_allowed is off", rule(), peer(allowed=False), ["tcp:22"]),
    ("not for UDP", rule("udp"), peer(), ["udp:22"]),
    (
        "added for a range containing 22",
        rule(ports=(), ranges=((20, 30),)),
        peer(),
        ["tcp:20-30", "tcp:22022"],
    ),
    (
        "not for a range without 22",
        rule(ports=(), ranges=((8000, 9000),)),
        peer(),
        ["tcp:8000-9000"],
    ),
    (
        "not duplicated when 22022 is already a port",
        rule(ports=("22", "22022")),
        peer(),
        ["tcp:22", "tcp:22022"],
    ),
    (
        "not duplicated when a range covers 22022",
        rule(ranges=((22000, 22100),)),
        peer(),
        ["tcp:22", "tcp:22000-22100"],
    ),
    ("nothing for an all-ports TCP rule", rule(ports=()), peer(), ["tcp:*"]),
    ("nothing for an all-protocols rule", rule("all", ports=()), peer(), ["all:*"]),
    ("nothing for ICMP", rule("icmp", ports=()), peer(), ["icmp:*"]),
    (
        "nothing for a TCP rule without port 22",
        rule(ports=("80", "443")),
        peer(),
        ["tcp:80", "tcp:443"],
    ),
    (
        "an ssh rule always gets it, even for an old peer with both switches off",
        rule("ssh"),
        peer("0.50.0", ssh=False, allowed=False),
        ["tcp:22", "tcp:22022"],
    ),
    (
        "an ssh rule without ports means port 22",
        rule("ssh", ports=()),
        peer(),
        ["tcp:22", "tcp:22022"],
    ),
    (
        "an ssh rule on a range containing 22",
        rule("ssh", ports=(), ranges=((1, 1024),)),
        peer(ssh=False),
        ["tcp:1-1024", "tcp:22022"],
    ),
    ("0.60.0-rc1 counts as 0.60.0", rule(), peer("0.60.0-rc1"), ["tcp:22", "tcp:22022"]),
    ("0.60.1 with build metadata", rule(), peer("v0.60.1+abc"), ["tcp:22", "tcp:22022"]),
    ("0.59.9-rc1 does not", rule(), peer("0.59.9-rc1"), ["tcp:22"]),
    ("0.61 (two parts) counts", rule(), peer("0.61"), ["tcp:22", "tcp:22022"]),
    ("1.0.0 counts", rule(), peer("1.0.0"), ["tcp:22", "tcp:22022"]),
    ("dev counts as supporting", rule(), peer("dev"), ["tcp:22", "tcp:22022"]),
    ("development counts", rule(), peer("development"), ["tcp:22", "tcp:22022"]),
    ("a ci- build counts", rule(), peer("ci-4f2a9c1"), ["tcp:22", "tcp:22022"]),
    ("an unparsable version does not", rule(), peer("banana"), ["tcp:22"]),
    ("an empty version does not", rule(), peer(""), ["tcp:22"]),
    (
        "the native_ssh capability wins over an old version",
        rule(),
        peer("0.1.0", capabilities=("native_ssh",)),
        ["tcp:22", "tcp:22022"],
    ),
]


@pytest.mark.parametrize(("case", "r", "p", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_22022_rule(case: str, r: RuleRecord, p: PeerRecord, expected: list[str]) -> None:
    assert ports(r, p) == expected, case


def test_a_drop_rule_gets_its_22022_copy_with_the_same_action() -> None:
    r = RuleRecord(
        sources=("a",), destinations=("b",), protocol="tcp", ports=("22",), action="drop"
    )
    expanded = expand_rule(r, "pol", SOURCES, peer_ssh_ready=True)
    assert [(fw.port, fw.action) for fw in expanded] == [("22", "drop"), ("22022", "drop")]


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("0.60.0", True),
        ("0.60.0-rc1", True),
        ("0.59.99", False),
        ("0.100.0", True),
        ("dev-abc", True),
        ("DEV", True),
        ("ci-1", True),
        ("cix", False),
        ("0.60.0.1", True),
        ("1.2.3.4.5", False),
        ("0.6O.0", False),
        ("-1", False),
    ],
)
def test_native_ssh_support_by_version(version: str, supported: bool) -> None:
    assert supports_native_ssh(PeerMeta(version=version)) is supported
