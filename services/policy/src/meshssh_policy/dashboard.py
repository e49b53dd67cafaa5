"""The read-only web dashboard at ``/``: server-rendered HTML, no JavaScript.

Shows peers (online state, SSH switch and effective state, relay mode, live sessions from
heartbeats), groups and policies. The page refreshes itself every 5 seconds.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from meshssh_common.version import VERSION

if TYPE_CHECKING:
    from meshssh_policy.management import Management

__all__ = ["render_dashboard"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin-bottom:1.5rem;width:100%}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.on{color:#080;font-weight:600}.off{color:#999}
code{font-size:.85em}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body or ''}</table>"


def _flag(on: bool, yes: str = "yes", no: str = "no") -> str:
    return f'<span class="on">{yes}</span>' if on else f'<span class="off">{no}</span>'


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    return f"{max(0, int(time.time() - at))} s ago"


def render_dashboard(mgmt: Management) -> str:
    """The dashboard page for the current state."""
    compiler = mgmt.compiler()
    state = mgmt.state
    peer_rows = []
    for peer in sorted(state.peers.values(), key=lambda p: p.name):
        seen = mgmt.presence.seen.get(peer.id)
        hb = seen.heartbeat if seen is not None else None
        sessions = "<br>".join(
            f"{_e(s.local_user)} ← {_e(s.jwt_user or '?')} from {_e(s.source)}"
            + (f" <code>{_e(s.command)}</code>" if s.command else "")
            for s in (hb.sessions if hb is not None else ())
        )
        peer_rows.append([
            f"{_e(peer.name)}<br><code>{_e(peer.id)}</code>",
            _e(peer.mesh_ip),
            _e(peer.meta.version),
            _flag(mgmt.presence.online(peer.id), "online", "offline")
            + f"<br>{_ago(seen.at if seen else None)}",
            _flag(peer.ssh_enabled, "on", "off"),
            _flag(compiler.ssh_enabled(peer.id), "enabled", "disabled")
            + (" (server allowed)" if peer.meta.flags.server_ssh_allowed else " (not allowed)"),
            _e(hb.relay_mode if hb is not None else "-"),
            _e(", ".join(compiler.index.peer_groups.get(peer.id, ()))),
            sessions or '<span class="off">none</span>',
        ])  # fmt: skip
    group_rows = [
        [f"{_e(g.name)}<br><code>{_e(g.id)}</code>",
         _e(", ".join(state.peers[p].name for p in g.peers if p in state.peers)),
         _e(", ".join(g.users))]
        for g in sorted(state.groups.values(), key=lambda g: g.id)
    ]  # fmt: skip
    policy_rows = []
    for policy in sorted(state.policies.values(), key=lambda p: p.id):
        rules = "<br>".join(
            f"{_e(','.join(r.sources))} → {_e(','.join(r.destinations))} {_e(r.action)} "
            f"{_e(r.protocol)} {_e(','.join(r.ports) or '')}"
            f"{_e(','.join(f'{x.start}-{x.end}' for x in r.port_ranges))}"
            + (f" users {_e(dict(r.authorized_groups))}" if r.authorized_groups else "")
            for r in policy.rules
        )
        policy_rows.append([
            f"{_e(policy.name)}<br><code>{_e(policy.id)}</code>",
            _flag(policy.enabled, "enabled", "disabled"),
            rules,
        ])  # fmt: skip
    online = sum(1 for p in state.peers if mgmt.presence.online(p))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='5'><title>meshssh</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>meshssh</h1><p>{len(state.peers)} peers, {online} online · "
        f"{len(state.users)} users · mesh {_e(mgmt.settings.mesh_prefix)} · v{_e(VERSION)}</p>"
        "<h2>Peers</h2>"
        + _table(
            [
                "peer",
                "mesh address",
                "version",
                "state",
                "SSH switch",
                "SSH",
                "relay",
                "groups",
                "live sessions",
            ],
            peer_rows,
        )
        + "<h2>Groups</h2>"
        + _table(["group", "peers", "users"], group_rows)
        + "<h2>Policies</h2>"
        + _table(["policy", "state", "rules"], policy_rows)
        + "</body></html>"
    )
