"""Admin operations on peers and the JSON views of records the API and dashboard show.

Example::

    await peer_ops.update(peer_id, PeerPatch(ssh_enabled=True))
    view = peer_view(state.peers[peer_id], presence, compiler)
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

from meshssh_common.errors import Conflict, NotFound
from meshssh_policy.api_models import PeerPatch
from meshssh_policy.bus_revocations import BusRevocations
from meshssh_policy.claims import Claims
from meshssh_policy.compiler import Compiler
from meshssh_policy.memberships import forget_member
from meshssh_policy.presence import Presence
from meshssh_policy.records import PeerRecord, SetupKeyRecord, name_key, peer_key
from meshssh_policy.settings import MAX_PEER_CREDS_TTL
from meshssh_policy.store import Store

__all__ = ["ENDED_KEPT", "PeerOps", "live_session", "peer_view", "record_view", "setup_key_view"]

ENDED_KEPT = 32
_SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def record_view(record: msgspec.Struct) -> dict[str, Any]:
    """A record as plain JSON-ready builtins (defaults included)."""
    return {f: msgspec.to_builtins(getattr(record, f)) for f in record.__struct_fields__}


def setup_key_view(key: SetupKeyRecord, now: float) -> dict[str, Any]:
    """A setup key without its hash, with its current validity."""
    out = record_view(key)
    out.pop("key_hash", None)
    out["valid"] = (
        not key.revoked
        and (not key.expires_at or now < key.expires_at)
        and (not key.usage_limit or key.used < key.usage_limit)
    )
    return out


def peer_view(peer: PeerRecord, presence: Presence, compiler: Compiler) -> dict[str, Any]:
    """A peer as the API shows it: record (no credential hash), groups, SSH and live state."""
    seen = presence.seen.get(peer.id)
    hb = seen.heartbeat if seen is not None else None
    return {
        "id": peer.id,
        "name": peer.name,
        "mesh_ip": peer.mesh_ip,
        "version": peer.meta.version,
        "capabilities": list(peer.meta.capabilities),
        "flags": msgspec.structs.asdict(peer.meta.flags),
        "hostname": peer.meta.hostname,
        "os": peer.meta.os,
        "ssh_host_key": peer.ssh_host_key,
        "ssh_enabled": peer.ssh_enabled,
        "ssh_active": compiler.ssh_enabled(peer.id),
        "groups": list(compiler.index.peer_groups.get(peer.id, ())),
        "setup_key_id": peer.setup_key_id,
        "kind": peer.kind,
        "nats_key": peer.nats_key,  # public: what `meshctl bus revoke` takes
        "created_at": peer.created_at,
        "last_login": peer.last_login,
        "online": presence.online(peer.id),
        "last_seen": seen.at if seen is not None else None,
        "serial": hb.serial if hb is not None else None,
        "ssh_running": hb.ssh_running if hb is not None else False,
        "relay_mode": hb.relay_mode if hb is not None else None,
        "sessions": [msgspec.to_builtins(s) for s in hb.sessions] if hb is not None else [],
    }


def live_session(presence: Presence, peer_id: str, session_id: str) -> bool:
    """True when the peer's last heartbeat lists ``session_id``."""
    seen = presence.seen.get(peer_id)
    hb = seen.heartbeat if seen is not None else None
    return hb is not None and any(s.session_id == session_id for s in hb.sessions)


class PeerOps:
    """Switch SSH, rename and remove peers."""

    def __init__(self, store: Store, revocations: BusRevocations | None = None) -> None:
        self.store = store
        self.claims = Claims(store)
        self.revocations = revocations

    def get(self, peer_id: str) -> PeerRecord:
        """The peer ``peer_id``.

        Raises:
            NotFound: no such peer.
        """
        peer = self.store.state.peers.get(peer_id)
        if peer is None:
            raise NotFound(f"peer {peer_id!r} does not exist")
        return peer

    async def update(self, peer_id: str, patch: PeerPatch) -> PeerRecord:
        """Set the admin SSH switch and/or rename the peer.

        Raises:
            NotFound: no such peer. Conflict: the new name is taken.
        """
        current = self.get(peer_id)
        name = current.name
        if patch.name is not None and patch.name != current.name:
            if not await self.claims.take(name_key(patch.name), peer_id):
                raise Conflict(f"peer name {patch.name!r} is already used by another peer")
            name = patch.name

        def change(peer: PeerRecord | None) -> PeerRecord:
            if peer is None:
                raise NotFound(f"peer {peer_id!r} does not exist")
            ssh = peer.ssh_enabled if patch.ssh_enabled is None else patch.ssh_enabled
            return msgspec.structs.replace(peer, ssh_enabled=ssh, name=name)

        result = await self.store.mutate(self.store.peers, peer_key(peer_id), change)
        assert result is not None
        if name != current.name:
            await self.claims.release(name_key(current.name), peer_id)
        return result

    async def end_session(self, peer_id: str, session_id: str) -> PeerRecord:
        """End a live session: its map lists the id and the peer's sshd closes it.

        The connection carrying the session closes, as when access is revoked. The last
        :data:`ENDED_KEPT` ids stay listed (a session id is never reused).

        Raises:
            NotFound: no such peer, or the peer reports no such live session.
        """
        self.get(peer_id)
        if not _SESSION_ID.match(session_id):
            raise NotFound(f"session {session_id[:80]!r} is not live on peer {peer_id!r}")

        def change(peer: PeerRecord | None) -> PeerRecord:
            if peer is None:
                raise NotFound(f"peer {peer_id!r} does not exist")
            if session_id in peer.ended_sessions:
                return peer
            ended = (*peer.ended_sessions, session_id)[-ENDED_KEPT:]
            return msgspec.structs.replace(peer, ended_sessions=ended)

        result = await self.store.mutate(self.store.peers, peer_key(peer_id), change)
        assert result is not None
        return result

    async def delete(self, peer_id: str) -> None:
        """Remove a peer: empty map, address and name freed, bus key revoked.

        Its live NATS connections close; its renewal is refused (no record).

        Raises:
            NotFound: no such peer. Unavailable: KV did not answer.
        """
        current = self.get(peer_id)
        removed: list[PeerRecord] = []

        def change(peer: PeerRecord | None) -> None:
            if peer is None:
                raise NotFound(f"peer {peer_id!r} does not exist")
            removed[:] = [peer]

        await self.store.mutate(self.store.peers, peer_key(peer_id), change)
        key = removed[-1].nats_key if removed else ""
        if key and self.revocations is not None:
            until = time.time() + MAX_PEER_CREDS_TTL + 60
            await self.revocations.revoke_removed(key, until=until)
        await self.claims.release_peer(peer_id, current.mesh_ip, current.name)
        await forget_member(self.store, peer=peer_id)
