"""Audit events, stored durably in the ``MESHSSH_AUDIT`` JetStream stream (SPEC §8)."""

from __future__ import annotations

from typing import Literal

from meshssh_common.wire.base import Count, Wire

__all__ = ["AuditEvent", "AuditKind"]

AuditKind = Literal[
    "auth-accepted",
    "auth-rejected",
    "connection-refused",
    "session-start",
    "session-end",
    "forward-open",
    "forward-close",
    "forward-refused",
    "sftp-start",
    "sftp-end",
    "access-revoked",
    "session-limit",
    "recording-failed",
    "admin-change",
    "browser-session-start",  # the gateway (issue 20): a browser terminal opened
    "browser-session-end",
]


class AuditEvent(Wire, tag="sshd.audit.v1", frozen=True, kw_only=True):
    """One audit record. Commands are summarised (argv0 and an argument count), never full.

    Every event about a connection carries its source: ``source_addr`` (mesh address and port)
    and, when the map names the peer at that address, ``source_peer`` (id) and
    ``source_peer_name``; events after authentication also carry ``local_user`` and the
    ``jwt_user`` id.

    ``admin-change`` events come from policy, one per management write (REST, dashboard):
    ``actor`` says who (``token:sha256:<12 hex>`` for the admin token, ``user:<id>`` for a
    dashboard sign-in), ``action`` what (``PATCH /api/v1/peers/{peer_id}``), ``targets`` which
    ids, ``detail`` the body's fields (secrets left out), ``result`` the HTTP status, and
    ``peer_id`` the peer concerned ("" when none).
    """

    kind: AuditKind
    peer_id: str
    at: float
    session_id: str = ""
    local_user: str = ""
    jwt_user: str = ""
    source_addr: str = ""
    source_peer: str = ""  # the source peer's id, from the map (empty: not a known peer)
    source_peer_name: str = ""  # the source peer's name, from the map
    method: str = ""
    result: str = ""
    reason: str = ""
    command: str = ""
    duration: float = 0.0
    bytes_in: Count = 0
    bytes_out: Count = 0
    forward: str = ""
    # auth-accepted: the token's email and name claims ("" when absent), so management can
    # add a user on first login (SPEC §6).
    email: str = ""
    name: str = ""
    # admin-change (policy): who changed what, and which ids.
    actor: str = ""
    action: str = ""
    targets: tuple[str, ...] = ()
    detail: str = ""
    # browser-session-* (the gateway, issue 20): ``peer_id`` is the gateway's own id (its audit
    # subject), ``target_peer`` the peer the terminal reaches, ``browser_addr`` the browser's
    # address; local_user, jwt_user, bytes, duration and result as for sessions.
    browser_addr: str = ""
    target_peer: str = ""
