"""The ``MESHSSH_RECORDINGS`` JetStream stream: session recordings, with size and age limits.

policy creates it at start, as it creates ``MESHSSH_AUDIT``; sshd only publishes into it, on
its own subjects ``meshssh.rec.v1.<peer>.<session>`` (a peer's credentials allow nothing else).
The oldest recordings go first when the stream is full or they are older than the age limit.

Each message is a piece of the session's asciicast v2 file (the first is its header line),
and carries the header :data:`SIZE_HEADER`: the file's size up to and including it.
:func:`read_recording` joins the pieces back (:func:`recording_chunks` yields them one by one,
for a response that streams), :func:`list_recordings` reads each recording's first message
(who, where, when) and last one (its size, and its duration: the time of its last event).

Example::

    await ensure_recordings_stream(js, max_bytes=10 * 2**30, max_age=90 * 86400)
    for info in await list_recordings(js):
        cast = await read_recording(js, info.session)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from meshssh_common import subjects
from meshssh_common.errors import NotFound
from meshssh_common.kv import default_replicas

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "MAX_CHUNK",
    "SIZE_HEADER",
    "RecordingInfo",
    "ensure_recordings_stream",
    "find_recording",
    "list_recordings",
    "read_recording",
    "recorded_sessions",
    "recording_chunks",
    "recording_info",
]

DEFAULT_MAX_BYTES = 10 * 2**30
DEFAULT_MAX_AGE = 90 * 86400.0
MAX_CHUNK = 256 * 1024  # the largest message a recorder publishes (under NATS' 1 MiB default)
SIZE_HEADER = "Meshssh-Rec-Bytes"  # on each message: the file's bytes up to and including it


async def ensure_recordings_stream(
    js: JetStreamContext,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_age: float = DEFAULT_MAX_AGE,
) -> None:
    """Create the recordings stream unless it exists (safe to race with other creators).

    Raises:
        nats.errors.Error: JetStream did not answer (callers retry).
    """
    try:
        await js.stream_info(subjects.RECORDINGS_STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=subjects.RECORDINGS_STREAM,
        subjects=[subjects.RECORDINGS_SUBJECTS],
        storage=StorageType.FILE,
        max_bytes=max_bytes,
        max_age=max_age,
        max_msg_size=MAX_CHUNK + 4096,
        discard=DiscardPolicy.OLD,
        num_replicas=default_replicas(),  # R3 on a cluster, as every stream and bucket
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.stream_info(subjects.RECORDINGS_STREAM)


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """One stored recording, from its header (what ``meshctl sessions ls`` shows)."""

    session: str
    peer: str
    user: str
    local_user: str
    source: str
    command: str
    started_at: int
    width: int
    height: int
    chunks: int
    duration: float = 0.0  # seconds: the time of the last event stored so far
    size: int = 0  # bytes of the asciicast file (0: not known, a recorder older than the header)

    def as_dict(self) -> dict[str, object]:
        """The JSON form of the REST API."""
        return {k: getattr(self, k) for k in self.__slots__}


def _header(data: bytes, session: str, peer: str, chunks: int) -> RecordingInfo:
    try:
        head = json.loads(data.split(b"\n", 1)[0])
        meta = head.get("meshssh", {})
        return RecordingInfo(
            session=session,
            peer=peer,
            user=str(meta.get("user", "")),
            local_user=str(meta.get("local_user", "")),
            source=str(meta.get("source", "")),
            command=str(meta.get("command", "")),
            started_at=int(head.get("timestamp", 0)),
            width=int(head.get("width", 0)),
            height=int(head.get("height", 0)),
            chunks=chunks,
        )
    except (ValueError, AttributeError, TypeError):
        return RecordingInfo(session, peer, "", "", "", "", 0, 0, 0, chunks)


async def _subjects(js: JetStreamContext, wanted: str) -> dict[str, int]:
    try:
        info = await js.stream_info(subjects.RECORDINGS_STREAM, subjects_filter=wanted)
    except nats.js.errors.NotFoundError:
        return {}
    return dict(info.state.subjects or {})


async def _first(js: JetStreamContext, subject: str, seq: int = 1) -> tuple[int, bytes]:
    msg = await js.get_msg(subjects.RECORDINGS_STREAM, seq=seq, subject=subject, next=True)
    return int(msg.seq or 0), msg.data or b""


def _last_event_time(data: bytes) -> float:
    """The time of the last event line of a chunk (0.0 for the header line alone)."""
    for line in reversed(data.rstrip(b"\n").split(b"\n")):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, list) and event and isinstance(event[0], int | float):
            return float(event[0])
        return 0.0
    return 0.0


async def _tail(js: JetStreamContext, subject: str) -> tuple[float, int]:
    """(duration, size) of a recording, from its last message."""
    msg = await js.get_last_msg(subjects.RECORDINGS_STREAM, subject)
    size = (msg.headers or {}).get(SIZE_HEADER, "")
    return _last_event_time(msg.data or b""), int(size) if str(size).isdigit() else 0


async def list_recordings(js: JetStreamContext) -> list[RecordingInfo]:
    """Every recording in the stream, newest first.

    Raises:
        nats.errors.Error: JetStream did not answer.
    """
    out: list[RecordingInfo] = []
    for subject, chunks in (await _subjects(js, subjects.RECORDINGS_SUBJECTS)).items():
        _, _, _, peer, session = subject.split(".", 4)
        try:
            _, data = await _first(js, subject)
            duration, size = await _tail(js, subject)
        except nats.js.errors.NotFoundError:
            continue  # aged out between the calls
        info = _header(data, session, peer, chunks)
        out.append(dataclasses.replace(info, duration=duration, size=size))
    out.sort(key=lambda r: (r.started_at, r.session), reverse=True)
    return out


async def recording_info(js: JetStreamContext, session_id: str) -> RecordingInfo:
    """What :func:`list_recordings` says about one recording.

    Raises:
        BadRequest: not a session id. NotFound: no such recording. nats.errors.Error: no
        answer from JetStream.
    """
    subject, chunks = await find_recording(js, session_id)
    try:
        _, data = await _first(js, subject)
        duration, size = await _tail(js, subject)
    except nats.js.errors.NotFoundError as e:
        raise NotFound(f"no recording of session {session_id!r}") from e  # just aged out
    _, _, _, peer, session = subject.split(".", 4)
    return dataclasses.replace(_header(data, session, peer, chunks), duration=duration, size=size)


async def recorded_sessions(js: JetStreamContext) -> set[str]:
    """The ids of the sessions with a recording (one stream info request).

    Raises:
        nats.errors.Error: JetStream did not answer.
    """
    found = await _subjects(js, subjects.RECORDINGS_SUBJECTS)
    return {subject.rsplit(".", 1)[1] for subject in found}


async def find_recording(js: JetStreamContext, session_id: str) -> tuple[str, int]:
    """The subject of a session's recording and its message count.

    Raises:
        BadRequest: not a session id. NotFound: no such recording. nats.errors.Error: no
        answer from JetStream.
    """
    found = await _subjects(js, subjects.recording_any_peer(session_id))
    if not found:
        raise NotFound(f"no recording of session {session_id!r}")
    return sorted(found.items())[0]


async def recording_chunks(js: JetStreamContext, subject: str, count: int) -> AsyncIterator[bytes]:
    """The messages of one recording in order (what :func:`find_recording` found).

    Raises:
        nats.errors.Error: JetStream stopped answering.
    """
    seq = 1
    for _ in range(count):
        try:
            at, data = await _first(js, subject, seq)
        except nats.js.errors.NotFoundError:
            return  # the rest aged out (or was never stored)
        yield data
        seq = at + 1


async def read_recording(js: JetStreamContext, session_id: str) -> bytes:
    """The asciicast v2 file of one session, its messages joined in order.

    Raises:
        BadRequest: not a session id. NotFound: no such recording. nats.errors.Error: no
        answer from JetStream.
    """
    subject, count = await find_recording(js, session_id)
    return b"".join([data async for data in recording_chunks(js, subject, count)])
