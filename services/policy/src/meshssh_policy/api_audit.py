"""REST route for the audit log: ``GET /api/v1/audit`` (``meshctl audit``, SPEC §8).

Query: ``user``, ``peer`` (an id or a peer name), ``kind``, ``before`` (a sequence from a
previous page's ``next_before``) and ``limit`` (1-500). Newest first.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from meshssh_policy.api_deps import MgmtDep
from meshssh_policy.audit_log import MAX_LIMIT, AuditQuery, event_view, read_audit
from meshssh_policy.management import Management

__all__ = ["peer_filter", "router"]

router = APIRouter(prefix="/api/v1", tags=["audit"])


def peer_filter(mgmt: Management, peer: str) -> str:
    """A peer filter given as a name or an id, as an id (unknown names stay as given)."""
    if not peer or peer in mgmt.state.peers:
        return peer
    return next((p.id for p in mgmt.state.peers.values() if p.name == peer), peer)


@router.get("/audit")
async def audit(
    mgmt: MgmtDep,
    user: Annotated[str, Query(max_length=255)] = "",
    peer: Annotated[str, Query(max_length=255)] = "",
    kind: Annotated[str, Query(max_length=64)] = "",
    before: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> dict[str, Any]:
    """Audit events, newest first: ``{"events": [...], "next_before": N}`` (0: no more)."""
    query = AuditQuery(
        user=user, peer=peer_filter(mgmt, peer), kind=kind, before=before, limit=limit
    )
    page = await read_audit(mgmt.js, query)
    return {
        "events": [event_view(seq, e) for seq, e in page.events],
        "next_before": page.next_before,
        "skipped": page.skipped,
    }
