"""``meshctl audit``: the audit log (``GET /api/v1/audit``), newest first, one line an event.

Filters: ``--user`` (a JWT user, or the user of a dashboard change), ``--peer`` (id or name),
``--kind`` (``admin-change``, ``session-start``...). ``--limit`` events a page; the last line
says how to see older ones (``--before SEQ``). Admin changes read ``who did what to which
ids → HTTP status``; SSH events ``user as local-user from source``.

Example::

    meshctl audit --kind admin-change
    meshctl audit --peer demo-server --kind session-start --limit 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from meshssh_cli.meshctl.api import AdminApi
from meshssh_cli.meshctl.tables import table, when

__all__ = ["audit", "audit_rows"]

AUDIT_HEADERS = ["SEQ", "WHEN", "KIND", "WHO", "PEER", "WHAT"]


def _what(e: dict[str, Any]) -> str:
    if e.get("action"):
        targets = ",".join(e.get("targets", []))
        return f"{e['action']} {targets} -> {e.get('result', '')}".replace("  ", " ")
    parts = [e.get("method", ""), e.get("result", ""), e.get("reason", ""), e.get("command", "")]
    if e.get("forward"):
        parts.append(e["forward"])
    return " ".join(p for p in parts if p) or "-"


def _who(e: dict[str, Any]) -> str:
    who = e.get("actor") or e.get("jwt_user") or "-"
    if e.get("local_user"):
        who += f" as {e['local_user']}"
    return str(who)


def audit_rows(events: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One line per event."""
    rows = [
        [
            e["seq"],
            when(e.get("at")),
            e["kind"],
            _who(e),
            (e.get("peer_id") or "-") + (f" <- {e['source_addr']}" if e.get("source_addr") else ""),
            _what(e),
        ]
        for e in events
    ]
    return AUDIT_HEADERS, rows


def audit(args: argparse.Namespace, api: AdminApi) -> tuple[Any, str]:
    """``audit [--user U] [--peer P] [--kind K] [--limit N] [--before SEQ]``."""
    query = {k: v for k, v in (("user", args.user), ("peer", args.peer), ("kind", args.kind)) if v}
    query["limit"] = str(args.limit)
    if args.before:
        query["before"] = str(args.before)
    page = api.get(f"/audit?{urlencode(query)}")
    text = table(*audit_rows(page["events"]))
    if page.get("next_before"):
        text += f"\n(older events: meshctl audit ... --before {page['next_before']})"
    return page, text
