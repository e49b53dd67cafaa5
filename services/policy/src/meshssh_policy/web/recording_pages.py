"""The dashboard's session recordings: a list, a player page per recording, and its cast.

``GET /recordings`` lists the recordings in ``MESHSSH_RECORDINGS`` (newest first),
``GET /recordings/{id}`` plays one with the vendored asciinema-player, which loads
``GET /recordings/{id}/cast``: the asciicast v2 file, streamed from the stream one message
at a time (the same bytes as ``meshctl sessions export``). Recordings are as sensitive as the
sessions themselves, so all three are for dashboard admins only, as the REST API's
recordings need the admin token: a page without a session redirects to sign-in, the cast
without a session gets 401, a read-only user gets 403, an unknown or malformed id 404.

Example::

    app.include_router(RecordingPages(mgmt, auth, pages).router())
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from meshssh_common import subjects
from meshssh_common.errors import BadRequest, NotFound, Unavailable, WireError
from meshssh_common.recording_stream import (
    RecordingInfo,
    find_recording,
    list_recordings,
    recording_chunks,
    recording_info,
)
from meshssh_policy.api_recordings import CAST_TYPE
from meshssh_policy.management import Management
from meshssh_policy.web.auth import WebAuth, login_redirect
from meshssh_policy.web.pages import SECURITY_HEADERS, Pages
from meshssh_policy.web.sessions import Session

__all__ = ["PLAYER_CSP", "RecordingPages", "duration_text", "size_text"]

# The player's terminal is WebAssembly, compiled from bytes in its bundle: its page alone may.
PLAYER_CSP = SECURITY_HEADERS["Content-Security-Policy"].replace(
    "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
)


def duration_text(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s`` or ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def size_text(size: int) -> str:
    """``812 B``, ``14.1 KiB``, ``3.2 MiB`` or ``-`` when not known (0)."""
    if size <= 0:
        return "-"
    if size < 1024:
        return f"{size} B"
    if size < 2**20:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 2**20:.1f} MiB"


def _unavailable(e: Exception) -> Unavailable:
    return Unavailable(f"{subjects.RECORDINGS_STREAM} did not answer: {e!r}")


class RecordingPages:
    """The recordings list, the player page and the cast route."""

    def __init__(self, mgmt: Management, auth: WebAuth, pages: Pages) -> None:
        self.mgmt = mgmt
        self.auth = auth
        self.pages = pages
        self.reads = mgmt.metrics.recording_reads

    def _admin(self, session: Session) -> None:
        if not session.admin:
            self.reads.labels(result="denied").inc()
            raise HTTPException(
                403, f"{session.user} may not see recordings: not a dashboard admin"
            )

    def _row(self, info: RecordingInfo, names: dict[str, str]) -> dict[str, Any]:
        return {
            **info.as_dict(),
            "peer_name": names.get(info.peer, "") or info.peer,
            "duration_text": duration_text(info.duration),
            "size_text": size_text(info.size),
        }

    async def _find(self, session_id: str) -> tuple[str, int]:
        try:
            return await find_recording(self.mgmt.js, subjects.token(session_id))
        except (BadRequest, NotFound) as e:
            self.reads.labels(result="not_found").inc()
            raise HTTPException(404, f"no recording of session {session_id[:80]!r}") from e
        except (nats.errors.Error, TimeoutError) as e:
            self.reads.labels(result="error").inc()
            raise _unavailable(e) from e

    async def _chunks(self, session_id: str, subject: str, count: int) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for data in recording_chunks(self.mgmt.js, subject, count):
                sent += len(data)
                yield data
        except (nats.errors.Error, TimeoutError, WireError) as e:
            # The status is sent already: the browser sees a cut-off body, not a short file
            # (JetStream stopped answering, a message did not unpack, or the file is too big).
            self.reads.labels(result="error").inc()
            self.mgmt.log.warning(
                "recording stream stopped mid-response",
                extra={"session": session_id, "sent": sent, "error": repr(e)},
            )
            raise
        self.reads.labels(result="served").inc()

    def router(self) -> APIRouter:
        """The GET routes."""
        router = APIRouter(include_in_schema=False)
        mgmt, auth, pages = self.mgmt, self.auth, self.pages

        @router.get("/recordings")
        async def recordings(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            self._admin(session)
            try:
                found = await list_recordings(mgmt.js)
            except (nats.errors.Error, TimeoutError) as e:
                raise _unavailable(e) from e
            names = pages.peer_names()
            rows = [self._row(info, names) for info in found]
            return pages.render(request, session, "recordings.html", recordings=rows)

        @router.get("/recordings/{session_id}")
        async def recording(request: Request, session_id: str) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            self._admin(session)
            try:
                info = await recording_info(mgmt.js, subjects.token(session_id))
            except (BadRequest, NotFound) as e:
                raise HTTPException(404, f"no recording of session {session_id[:80]!r}") from e
            except (nats.errors.Error, TimeoutError) as e:
                raise _unavailable(e) from e
            response = pages.render(
                request, session, "recording.html", r=self._row(info, pages.peer_names())
            )
            response.headers["Content-Security-Policy"] = PLAYER_CSP
            return response

        @router.get("/recordings/{session_id}/cast")
        async def cast(request: Request, session_id: str) -> Response:
            if (session := auth.session(request)) is None:
                self.reads.labels(result="unauthenticated").inc()
                raise HTTPException(401, "sign in first")
            self._admin(session)
            subject, count = await self._find(session_id)
            headers = {
                **SECURITY_HEADERS,
                "Content-Disposition": f'inline; filename="{session_id}.cast"',
            }
            return StreamingResponse(
                self._chunks(session_id, subject, count), media_type=CAST_TYPE, headers=headers
            )

        return router
