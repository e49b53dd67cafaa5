"""What the dashboard's pages show, computed from the same state and views as the REST API.

Example::

    rows = [peer_row(mgmt, p) for p in peers]
    row["ssh_explained"]  # "disabled: the peer was not started with --allow-server-ssh"
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any

import msgspec

from meshssh_common.wire import FirewallRule, NetworkMap
from meshssh_policy.management import Management
from meshssh_policy.peers import peer_view
from meshssh_policy.records import PolicyRecord, RuleRecord

__all__ = [
    "ago",
    "authorized_text",
    "explain_ssh",
    "host_key_fingerprint",
    "live_counts",
    "peer_row",
    "rule_text",
    "rules_of_map",
]

_FLAGS = {
    "server_ssh_allowed": "--allow-server-ssh",
    "local_port_forwarding": "-L/-D forwarding",
    "remote_port_forwarding": "-R forwarding",
    "sftp": "SFTP",
    "root_login": "root login",
    "disable_ssh_auth": "no JWT (machine identity)",
    "agent_forwarding": "agent forwarding",
}


def ago(at: float | None) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``5 d ago`` or ``never``."""
    if not at:
        return "never"
    seconds = max(0, int(time.time() - at))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def explain_ssh(view: dict[str, Any]) -> tuple[str, str]:
    """The SSH state of a peer view in words: (short state, explanation)."""
    allowed = view["flags"].get("server_ssh_allowed", False)
    if not allowed:
        return "disabled", "disabled: the peer was not started with --allow-server-ssh"
    if not view["ssh_active"]:
        return "off", "off: the switch is off and no enabled ssh policy targets this peer"
    how = "the switch is on" if view["ssh_enabled"] else "an enabled ssh policy targets it"
    if not view["online"]:
        return "on", f"on ({how}); the peer is offline"
    if view["ssh_running"]:
        return "running", f"running: {how} and the peer allows the SSH server"
    return "starting", f"on ({how}); waiting for the peer's SSH server to start"


def peer_row(mgmt: Management, peer_id: str) -> dict[str, Any]:
    """A peer view plus what the Peers page shows about it."""
    view = peer_view(mgmt.state.peers[peer_id], mgmt.presence, mgmt.compiler())
    state, explained = explain_ssh(view)
    view["ssh_state"] = state
    view["ssh_explained"] = explained
    view["flag_names"] = [label for f, label in _FLAGS.items() if view["flags"].get(f)]
    view["last_seen_text"] = ago(view["last_seen"])
    return view


def host_key_fingerprint(key_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of an ``ssh-ed25519 AAAA...`` line ("" if none)."""
    parts = key_line.split()
    if len(parts) < 2:
        return ""
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return ""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def authorized_text(authorized: dict[str, Any]) -> str:
    """``authorized_groups`` as the form shows it: ``group: user user`` per line."""
    return "\n".join(f"{g}: {' '.join(users)}".rstrip() for g, users in authorized.items())


def rule_text(rule: RuleRecord) -> str:
    """One rule in a line: ``users → servers ssh 22 accept (users: root)``."""
    ports = ",".join([*rule.ports, *(f"{r.start}-{r.end}" for r in rule.port_ranges)])
    auth = "; ".join(
        f"{g}: {' '.join(u) or 'any local user'}" for g, u in rule.authorized_groups.items()
    )
    return (
        f"{','.join(rule.sources)} → {','.join(rule.destinations)} {rule.protocol}"
        + (f" {ports}" if ports else "")
        + f" {rule.action}"
        + (f" ({auth})" if auth else "")
    )


def rules_of_map(netmap: NetworkMap | None) -> list[dict[str, Any]]:
    """The inbound firewall rules of a published map, for the peer page."""
    if netmap is None:
        return []
    out = []
    for rule in netmap.firewall_rules:
        out.append(_firewall_view(rule))
    return out


def _firewall_view(rule: FirewallRule) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(rule)
    ports = rule.port or (
        f"{rule.port_range.start}-{rule.port_range.end}" if rule.port_range else "all"
    )
    view["ports_text"] = ports
    view["sources_text"] = ", ".join(rule.sources)
    return view


def live_counts(mgmt: Management) -> dict[str, Any]:
    """The live strip: peers, online peers, SSH servers running, live sessions."""
    peers = mgmt.state.peers
    online = [p for p in peers if mgmt.presence.online(p)]
    sessions: list[tuple[str, Any]] = []
    running = 0
    for peer_id in online:
        seen = mgmt.presence.seen.get(peer_id)
        hb = seen.heartbeat if seen is not None else None
        if hb is None:
            continue
        running += int(hb.ssh_running)
        sessions.extend((peers[peer_id].name, s) for s in hb.sessions)
    return {"peers": len(peers), "online": len(online), "running": running, "sessions": sessions}


def policy_rows(mgmt: Management) -> list[tuple[PolicyRecord, list[str]]]:
    """Every policy with its rules in words."""
    return [
        (p, [rule_text(r) for r in p.rules])
        for p in sorted(mgmt.state.policies.values(), key=lambda p: p.id)
    ]
