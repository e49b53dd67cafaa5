"""docs/security.md's permission table says exactly what the bus identities' JWTs carry.

The table's cells are read back into subject lists (``JS write S``, ``KV write b`` and
``JS read S`` expand the way :mod:`meshssh_common.bus_permissions` builds them) and compared
with the functions that mint the JWTs, so the page cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshssh_common.bus_permissions import (
    Permissions,
    admin_permissions,
    authn_permissions,
    gateway_permissions,
    inbox_prefix,
    js_stream_read,
    js_stream_write,
    kv_stream,
    peer_permissions,
    policy_permissions,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
PEER = "p1"
INBOX = inbox_prefix("UEXAMPLEUSERKEY")


def table() -> dict[str, list[str]]:
    """identity → [publish, subscribe, replies] cells of the permission table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if m := re.match(r"^\| \*\*([a-z ]+)\*\* \|(.*)\|\s*$", line):
            rows[m[1]] = [cell.strip() for cell in m[2].split("|")]
    return rows


def subjects_of(cell: str) -> set[str]:
    """The subjects a cell names: segments split by ';', with the JS/KV shorthands expanded."""
    out: set[str] = set()
    for segment in cell.split(";"):
        names = [
            n.replace("<peer>", PEER).replace("<inbox>", INBOX)
            for n in re.findall(r"`([^`]+)`", segment)
        ]
        kind = segment.strip()
        if kind.startswith("JS write "):
            out |= {s for n in names for s in js_stream_write(n)}
        elif kind.startswith("KV write "):
            out |= {s for n in names for s in [*js_stream_write(kv_stream(n)), f"$KV.{n}.>"]}
        elif kind.startswith("JS read "):
            out |= {s for n in names for s in js_stream_read(n)}
        else:
            out |= set(names)
    return out


@pytest.mark.parametrize(
    ("identity", "permissions"),
    [
        ("peer", peer_permissions(PEER, INBOX)),
        ("gateway peer", gateway_permissions(PEER, INBOX)),
        ("policy", policy_permissions(INBOX)),
        ("authn", authn_permissions(INBOX)),
        ("admin", admin_permissions()),
        ("system user", admin_permissions()),  # bus_keys mints the system user with these
    ],
)
def test_the_permission_table_is_what_the_jwts_carry(
    identity: str, permissions: Permissions
) -> None:
    publish, subscribe, replies = table()[identity]
    assert subjects_of(publish) == set(permissions.pub)
    assert subjects_of(subscribe) == set(permissions.sub)
    assert replies.startswith("yes") == permissions.responds
    assert not permissions.pub_deny
    assert not permissions.sub_deny
