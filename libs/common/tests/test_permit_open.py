"""--ssh-permit-open (OpenSSH PermitOpen syntax): parsing, canonical specs, matching."""

from __future__ import annotations

import pytest

from meshssh_common.permit_open import PermitOpen, PermitOpenError


def test_default_and_any_allow_everything() -> None:
    for values in ([], ["any"]):
        rule = PermitOpen.parse(values)
        assert rule.specs == ("any",)
        assert rule.allows("169.254.169.254", 80)


def test_none_allows_nothing() -> None:
    rule = PermitOpen.parse(["none"])
    assert rule.specs == ("none",)
    assert not rule.allows("127.0.0.1", 22)


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("db.internal", 5432, True),
        ("DB.Internal", 5432, True),  # host names compare case-insensitively
        ("db.internal", 5433, False),
        ("10.0.0.5", 5432, False),  # no DNS: another name for it is another host
        ("::1", 8080, True),
        ("[::1]", 8080, True),
        ("::1", 8081, False),
        ("anything", 443, True),  # *:443
        ("web", 1, True),  # web:*
        ("web", 65535, True),
        ("127.0.0.1", 4222, False),  # NATS on loopback stays out of reach
    ],
)
def test_entries_match_host_and_port_exactly(host: str, port: int, allowed: bool) -> None:
    rule = PermitOpen.parse(["db.internal:5432", "[::1]:8080", "*:443", "web:*"])
    assert rule.allows(host, port) is allowed


def test_specs_are_canonical_and_deduplicated() -> None:
    rule = PermitOpen.parse(["DB:22 db:22", "[::1]:*", "*:*"])
    assert rule.specs == ("db:22", "[::1]:*", "*:*")
    assert PermitOpen.parse(rule.specs) == rule


@pytest.mark.parametrize(
    "value",
    [
        "db",
        ":22",
        "db:",
        "db:0",
        "db:65536",
        "db:http",
        "::1:22",
        "[::1:22",
        "[db]:22",
        "a b:22x",
        "any db:22",
        "none db:22",
        "db:²",
    ],
)
def test_bad_values_are_refused_with_a_typed_error(value: str) -> None:
    with pytest.raises(PermitOpenError):
        PermitOpen.parse([value])
