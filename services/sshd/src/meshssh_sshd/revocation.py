"""Live revocation: re-check every live connection when a new map arrives (SPEC §6).

A connection stays only while the current map still lets it in: the map exists, SSH is
enabled for the peer, the ACL accepts the connection's source on the port it was checked on
(22022, or 22 for relayed ones), and, in JWT mode, the authorization table still grants its
user the local user it logged in as. Otherwise it is closed with "access revoked", audited
and counted by reason.

Example::

    revoker = Revoker(core)
    maps.on_change(revoker.on_map)
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from meshssh_common.acl import AclDecision, check_inbound
from meshssh_common.ssh_auth import authorize
from meshssh_common.wire import NetworkMap
from meshssh_sshd.sessions import LiveConnection

if TYPE_CHECKING:
    from meshssh_sshd.core import SshdCore

__all__ = ["Revoked", "Revoker", "revocation_reason"]


class Revoked(enum.StrEnum):
    """Why a live connection was closed (the ``reason`` label of ``policy_kicks``)."""

    NO_MAP = "no_map"
    SSH_DISABLED = "ssh_disabled"
    SOURCE = "source"
    USER = "user"
    ENDED = "ended"  # an administrator ended the session (the map lists it)


def revocation_reason(
    netmap: NetworkMap | None, record: LiveConnection, *, jwt_mode: bool
) -> Revoked | None:
    """Why ``record`` may no longer stay under ``netmap`` (a bounded label), or None."""
    if netmap is None:
        return Revoked.NO_MAP
    if not netmap.peer.ssh_enabled:
        return Revoked.SSH_DISABLED
    if netmap.peer.ended_sessions and not record.sessions.keys().isdisjoint(
        netmap.peer.ended_sessions
    ):
        return Revoked.ENDED
    origin = record.origin
    if check_inbound(netmap, origin.client_ip, origin.acl_port) is not AclDecision.ACCEPT:
        return Revoked.SOURCE
    authorized = authorize(netmap.ssh_auth, record.jwt_user, record.local_user)
    if jwt_mode and record.authenticated and not authorized:
        return Revoked.USER
    return None


class Revoker:
    """Closes the connections a new map no longer allows."""

    def __init__(self, core: SshdCore) -> None:
        self._core = core

    def on_map(self, old: NetworkMap | None, new: NetworkMap | None) -> None:
        """Called by the map watcher after it applied ``new``."""
        core = self._core
        if new is not None:
            core.metrics.netmap_serial.set(new.serial)
        for record in list(core.live.connections.values()):
            reason = revocation_reason(new, record, jwt_mode=core.jwt_mode)
            if reason is None:
                continue
            core.metrics.policy_kicks.labels(reason=reason).inc()
            core.audit.emit(
                "access-revoked",
                local_user=record.local_user,
                jwt_user=record.jwt_user,
                source_addr=record.origin.label,
                reason=reason,
                session_id=",".join(sorted(record.sessions)),
                **record.origin.peer_fields(),
            )
            core.log.info(
                "access revoked: closing connection",
                extra={
                    "conn": record.conn_id,
                    "reason": reason,
                    "user": record.local_user,
                    "serial": new.serial if new is not None else 0,
                },
            )
            record.closer.revoke(_REASON_TEXT.get(reason, reason))


_REASON_TEXT = {
    "no_map": "this peer was removed from the mesh",
    "ssh_disabled": "SSH was disabled for this peer",
    "ended": "an administrator ended this session",
    "source": "your machine may no longer reach this peer",
    "user": "you are no longer authorized for this user",
}
