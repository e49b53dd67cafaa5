"""REST routes for peers: list, show, switch SSH, rename, remove, and the current map."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Response

from meshssh_common.errors import NotFound
from meshssh_policy.api_deps import MgmtDep
from meshssh_policy.api_models import PeerPatch
from meshssh_policy.peers import peer_view

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["peers"])


@router.get("/status", tags=["status"])
async def status(mgmt: MgmtDep) -> dict[str, Any]:
    """This replica: state revisions applied and those whose maps are all published."""
    peers = mgmt.state.peers
    return {
        "instance": mgmt.settings.instance,
        "loaded": mgmt.engine.loaded.is_set(),
        "peers": len(peers),
        "peers_online": sum(1 for p in peers if mgmt.presence.online(p)),
        "state_revisions": dict(mgmt.state.view),
        "processed_revisions": dict(mgmt.engine.processed),
        "mesh_prefix": mgmt.settings.mesh_prefix,
    }


@router.get("/peers")
async def list_peers(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every peer with its groups, SSH state, online state and live sessions."""
    compiler = mgmt.compiler()
    peers = sorted(mgmt.state.peers.values(), key=lambda p: (p.name, p.id))
    return [peer_view(p, mgmt.presence, compiler) for p in peers]


@router.get("/peers/{peer_id}")
async def get_peer(peer_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """One peer."""
    return peer_view(mgmt.peer_ops.get(peer_id), mgmt.presence, mgmt.compiler())


@router.patch("/peers/{peer_id}")
async def patch_peer(peer_id: str, body: PeerPatch, mgmt: MgmtDep) -> dict[str, Any]:
    """Switch the peer's admin SSH switch (``ssh_enabled``) or rename it."""
    peer = await mgmt.peer_ops.update(peer_id, body)
    return peer_view(peer, mgmt.presence, mgmt.compiler())


@router.delete("/peers/{peer_id}", status_code=204)
async def delete_peer(peer_id: str, mgmt: MgmtDep) -> Response:
    """Remove a peer: its map empties, so it refuses everything and its SSH server stops."""
    await mgmt.peer_ops.delete(peer_id)
    return Response(status_code=204)


@router.delete("/peers/{peer_id}/sessions/{session_id}", status_code=204)
async def end_session(peer_id: str, session_id: str, mgmt: MgmtDep) -> Response:
    """End a live session: the peer's sshd closes its connection ("access revoked")."""
    await mgmt.end_session(peer_id, session_id)
    return Response(status_code=204)


@router.get("/peers/{peer_id}/netmap")
async def get_netmap(peer_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """The network map currently published for the peer (as stored in KV)."""
    mgmt.peer_ops.get(peer_id)
    netmap = await mgmt.engine.publisher.current(peer_id)
    if netmap is None:
        raise NotFound(f"no network map published for peer {peer_id!r} yet")
    out: dict[str, Any] = msgspec.to_builtins(netmap)
    return out
