"""Reading ``MESHSSH_AUDIT``: newest first, filtered by user, peer and kind, page by page.

Used by ``GET /api/v1/audit`` (and so ``meshctl audit``) and the dashboard's Audit page. It
walks the stream backwards by sequence with JetStream direct gets, so no consumer is created
per reader; one page scans at most :data:`MAX_SCAN` stored events, and says where to go on
(``next_before``) when it stopped before the start of the stream.

Filters: ``user`` matches the event's JWT user or its admin actor ``user:<id>``; ``peer``
matches the peer the event happened on or its source peer (an id); ``kind`` is one audit
kind. An event that does not decode is skipped and counted on the page (``skipped``).

Example::

    page = await read_audit(js, AuditQuery(kind="admin-change", limit=50))
    older = await read_audit(js, AuditQuery(kind="admin-change", before=page.next_before))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from meshssh_common import codec, subjects
from meshssh_common.errors import Unavailable, WireError
from meshssh_common.wire import AuditEvent

__all__ = ["MAX_LIMIT", "MAX_SCAN", "AuditPage", "AuditQuery", "event_view", "read_audit"]

MAX_LIMIT = 500
MAX_SCAN = 5000


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to read: filters, where to start (``before`` a sequence; 0 = newest), how many."""

    user: str = ""
    peer: str = ""
    kind: str = ""
    before: int = 0
    limit: int = 50


@dataclass(slots=True)
class AuditPage:
    """Events newest first, each with its stream sequence; ``next_before`` 0 = no more."""

    events: list[tuple[int, AuditEvent]] = field(default_factory=list)
    next_before: int = 0
    skipped: int = 0


def _matches(event: AuditEvent, query: AuditQuery) -> bool:
    if query.kind and event.kind != query.kind:
        return False
    if query.user and query.user not in (event.jwt_user, event.actor.removeprefix("user:")):
        return False
    return not query.peer or query.peer in (event.peer_id, event.source_peer)


def event_view(seq: int, event: AuditEvent) -> dict[str, Any]:
    """An event as JSON-ready builtins, with its sequence."""
    out: dict[str, Any] = {"seq": seq}
    for name in event.__struct_fields__:
        out[name] = msgspec.to_builtins(getattr(event, name))
    return out


async def read_audit(js: JetStreamContext, query: AuditQuery) -> AuditPage:
    """One page of matching events, newest first.

    Raises:
        Unavailable: JetStream did not answer (or the stream does not exist yet: empty page).
    """
    limit = max(1, min(query.limit, MAX_LIMIT))
    try:
        info = await js.stream_info(subjects.AUDIT_STREAM)
    except nats.js.errors.NotFoundError:
        return AuditPage()
    except (nats.errors.Error, TimeoutError) as e:
        raise Unavailable(f"the audit stream cannot be read: {e!r}") from e
    first = int(info.state.first_seq or 0)
    last = int(info.state.last_seq or 0)
    seq = min(last, query.before - 1) if query.before > 0 else last
    page = AuditPage()
    scanned = 0
    while seq >= max(first, 1) and len(page.events) < limit and scanned < MAX_SCAN:
        scanned += 1
        try:
            raw = await js.get_msg(subjects.AUDIT_STREAM, seq=seq, direct=False)
        except nats.js.errors.NotFoundError:
            seq -= 1  # deleted or expired
            continue
        except (nats.errors.Error, TimeoutError) as e:
            raise Unavailable(f"the audit stream cannot be read: {e!r}") from e
        try:
            event = codec.decode(raw.data or b"", AuditEvent)
        except WireError:
            page.skipped += 1
            seq -= 1
            continue
        if _matches(event, query):
            page.events.append((seq, event))
        seq -= 1
    page.next_before = seq + 1 if seq >= max(first, 1) else 0
    return page
