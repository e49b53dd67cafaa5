"""REST routes for session recordings (``meshctl sessions``; the dashboard has its own).

``GET /api/v1/recordings`` lists the recordings in ``MESHSSH_RECORDINGS``, newest first (who,
where, when, terminal size, chunks, duration, size). ``GET /api/v1/recordings/{session_id}``
returns one recording as an asciicast v2 file (``application/x-asciicast``), as
``asciinema play`` and asciinema-player read it. Both need the admin token (recordings are as
sensitive as the sessions themselves).

Example::

    curl -H "Authorization: Bearer $TOKEN" $URL/api/v1/recordings/3f2a9c01d4e5 > s.cast
"""

from __future__ import annotations

from typing import Any

import nats.errors
from fastapi import APIRouter
from fastapi.responses import Response

from meshssh_common import subjects
from meshssh_common.errors import Unavailable
from meshssh_common.recording_stream import list_recordings, read_recording
from meshssh_policy.api_deps import MgmtDep

__all__ = ["CAST_TYPE", "router"]

CAST_TYPE = "application/x-asciicast"

router = APIRouter(prefix="/api/v1", tags=["recordings"])


@router.get("/recordings")
async def recordings(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every stored recording, newest first."""
    try:
        found = await list_recordings(mgmt.js)
    except (nats.errors.Error, TimeoutError) as e:
        raise Unavailable(f"{subjects.RECORDINGS_STREAM} did not answer: {e!r}") from e
    names = {p.id: p.name for p in mgmt.state.peers.values()}
    return [{**r.as_dict(), "peer_name": names.get(r.peer, "")} for r in found]


@router.get("/recordings/{session_id}", response_class=Response)
async def recording(mgmt: MgmtDep, session_id: str) -> Response:
    """One recording as an asciicast v2 file."""
    subjects.token(session_id)  # BadRequest (400) for anything that is not an id
    try:
        data = await read_recording(mgmt.js, session_id)
    except (nats.errors.Error, TimeoutError) as e:
        raise Unavailable(f"{subjects.RECORDINGS_STREAM} did not answer: {e!r}") from e
    return Response(
        data,
        media_type=CAST_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{session_id}.cast"'},
    )
