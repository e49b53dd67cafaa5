"""``meshctl`` output for people: aligned tables and short detail views.

Example::

    print(table(["NAME", "ID"], [["web", "3fa9c1d2e0b4"]]))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "group_rows",
    "peer_detail",
    "peer_rows",
    "policy_rows",
    "rule_text",
    "setup_key_rows",
    "table",
    "user_rows",
    "when",
]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; "(none)" when there are no rows."""
    if not rows:
        return "(none)"
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    )


def _onoff(value: Any, on: str = "on", off: str = "off") -> str:
    return on if value else off


PEER_HEADERS = [
    "NAME",
    "ID",
    "MESH IP",
    "VERSION",
    "STATE",
    "SSH SWITCH",
    "SSH",
    "SESSIONS",
    "GROUPS",
]


def peer_rows(peers: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``peers ls``: one line per peer."""
    rows = [
        [
            p["name"],
            p["id"],
            p["mesh_ip"],
            p["version"] or "-",
            _onoff(p["online"], "online", "offline"),
            _onoff(p["ssh_enabled"]),
            _onoff(p["ssh_active"], "enabled", "disabled")
            + ("" if p["flags"].get("server_ssh_allowed") else " (not allowed)"),
            len(p.get("sessions", [])),
            ",".join(p["groups"]) or "-",
        ]
        for p in peers
    ]
    return PEER_HEADERS, rows


def peer_detail(p: dict[str, Any]) -> str:
    """``peers show``: fields, then live sessions."""
    flags = [
        name
        for name, on in p["flags"].items()
        if on is True and name not in ("jwt_cache_ttl", "permit_open")
    ]
    permit = p["flags"].get("permit_open") or ["any"]
    if list(permit) != ["any"]:
        flags.append(f"permit-open {' '.join(permit)}")
    lines = [
        f"name:          {p['name']}",
        f"id:            {p['id']}",
        f"mesh address:  {p['mesh_ip']}",
        f"version:       {p['version'] or '-'}",
        f"state:         {_onoff(p['online'], 'online', 'offline')}",
        f"ssh switch:    {_onoff(p['ssh_enabled'])}",
        f"ssh:           {_onoff(p['ssh_active'], 'enabled', 'disabled')}",
        f"flags:         {', '.join(flags) or '-'}",
        f"groups:        {', '.join(p['groups']) or '-'}",
        f"relay:         {p.get('relay_mode') or '-'}",
        f"host key:      {p['ssh_host_key'] or '-'}",
        f"nats key:      {p.get('nats_key') or '-'}",
        f"sessions:      {len(p.get('sessions', []))}",
    ]
    for s in p.get("sessions", []):
        who = s.get("jwt_user") or "?"
        lines.append(
            f"  {s.get('session_id', '?')}  {s.get('local_user', '?')} <- {who} from "
            f"{s.get('source', '?')}"
            f" {s.get('command', '')}".rstrip()
        )
    return "\n".join(lines)


def when(epoch: Any) -> str:
    """A stored time (seconds since the epoch) as ``2025-05-01 12:34:56Z``; ``-`` for never."""
    if not isinstance(epoch, int | float) or epoch <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def user_rows(users: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``users ls``: first seen and last login come from accepted SSH logins."""
    rows = [
        [
            u["id"],
            u["email"] or "-",
            u["name"] or "-",
            ",".join(u["groups"]) or "-",
            when(u.get("first_seen")),
            when(u.get("last_login")),
        ]
        for u in users
    ]
    return ["ID", "EMAIL", "NAME", "GROUPS", "FIRST SEEN", "LAST LOGIN"], rows


def group_rows(groups: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``groups ls``."""
    rows = [
        [g["id"], g["name"] or "-", len(g["peers"]), ",".join(g["users"]) or "-"] for g in groups
    ]
    return ["ID", "NAME", "PEERS", "USERS"], rows


def rule_text(rule: dict[str, Any]) -> str:
    """One rule as ``users -> servers accept tcp 22,8000-8100``."""
    ports = [
        *rule.get("ports", []),
        *(f"{r['start']}-{r['end']}" for r in rule.get("port_ranges", [])),
    ]
    text = (
        f"{','.join(rule['sources'])} -> {','.join(rule['destinations'])} "
        f"{rule.get('action', 'accept')} {rule.get('protocol', 'all')}"
    )
    if ports:
        text += " " + ",".join(ports)
    authorized = rule.get("authorized_groups") or {}
    if authorized:
        text += " as " + ";".join(f"{g}={','.join(u) or '*'}" for g, u in authorized.items())
    options = [f"recording={rule['recording']}"] if rule.get("recording", "off") != "off" else []
    options += [
        f"{k}={rule[k]}s" for k in ("idle_timeout", "max_session", "check_period") if rule.get(k)
    ]
    options += [k for k in ("record_input", "record_exec") if rule.get(k)]
    if options:
        text += " (" + " ".join(options) + ")"
    return text


def policy_rows(policies: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``policies ls``: one line per rule."""
    rows = []
    for p in policies:
        for i, rule in enumerate(p["rules"]):
            first = i == 0
            rows.append(
                [
                    p["id"] if first else "",
                    p["name"] if first else "",
                    _onoff(p["enabled"], "enabled", "disabled") if first else "",
                    rule_text(rule),
                ]
            )
    return ["ID", "NAME", "STATE", "RULES"], rows


def setup_key_rows(keys: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``setup-keys ls``."""
    rows = []
    for k in keys:
        limit = k["usage_limit"] or "unlimited"
        state = "revoked" if k["revoked"] else ("valid" if k["valid"] else "expired/used up")
        rows.append(
            [
                k["id"],
                k["name"],
                k["type"] if k.get("kind", "peer") == "peer" else f"{k['type']},{k['kind']}",
                f"{k['used']}/{limit}",
                state,
                ",".join(k["auto_groups"]) or "-",
                _onoff(k["ssh_enabled"]),
            ]
        )
    return ["ID", "NAME", "TYPE", "USED", "STATE", "AUTO GROUPS", "SSH"], rows
