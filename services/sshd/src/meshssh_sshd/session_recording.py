"""Whether and how a session is recorded, from the session rules of its login.

PTY sessions are recorded when the login's rules say ``recording`` ``best_effort`` or
``required``; non-PTY exec and shell sessions only with ``record_exec`` too; SFTP never. A
``required`` session whose recording cannot start is refused (audited ``recording-failed``,
reason ``unavailable``, and counted); a ``best_effort`` one runs unrecorded.

Example::

    may_start, recorder = await open_recorder(core, record, session_id="ab12", ...)
    if not may_start:
        ...  # show UNAVAILABLE_TEXT and end the session
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshssh_common import subjects
from meshssh_common.logs import BoundLogger
from meshssh_sshd.process_launch import PtySpec
from meshssh_sshd.recorder import Recorder, asciicast_header
from meshssh_sshd.sessions import LiveConnection

if TYPE_CHECKING:
    from collections.abc import Callable

    from meshssh_sshd.core import SshdCore

__all__ = ["open_recorder", "wanted"]


def wanted(record: LiveConnection, pty: PtySpec | None, kind: str) -> bool:
    """Whether the login's rules ask to record this session."""
    rules = record.rules
    if rules.recording == "off" or kind == "sftp":
        return False
    return pty is not None or rules.record_exec


async def open_recorder(
    core: SshdCore,
    record: LiveConnection,
    *,
    session_id: str,
    local_user: str,
    pty: PtySpec | None,
    kind: str,
    command: str,
    log: BoundLogger,
    failed: Callable[[str], None],
    pressure: Callable[[bool], None],
) -> tuple[bool, Recorder | None]:
    """``(may the session start, its recorder or None)``; audits a recording that failed."""
    if not wanted(record, pty, kind):
        return True, None
    required = record.rules.recording == "required"
    fields = {
        "session_id": session_id,
        "local_user": local_user,
        "jwt_user": record.jwt_user,
        "source_addr": record.origin.label,
        "command": command,
        **record.origin.peer_fields(),
    }
    if core.js is not None:
        header = asciicast_header(
            cols=pty.cols if pty is not None else 80,
            rows=pty.rows if pty is not None else 24,
            term=pty.term if pty is not None else "",
            session_id=session_id,
            peer_id=core.peer_id,
            user=record.jwt_user,
            local_user=local_user,
            source=record.origin.label,
            source_peer=record.origin.peer_id,
            command=command,
        )
        recorder = Recorder(
            core.js,
            subjects.recording(core.peer_id, session_id),
            header,
            required=required,
            record_input=record.rules.record_input,
            metrics=core.metrics,
            log=log,
            failed=failed,
            pressure=pressure,
        )
        if await recorder.open():
            return True, recorder
    core.audit.emit(
        "recording-failed", **fields, reason="unavailable", result=record.rules.recording
    )
    log.warning("recording did not start", extra={"mode": record.rules.recording})
    if required:
        core.metrics.session_refusals.labels(reason="recording_unavailable").inc()
        return False, None
    return True, None
