"""The ``MESHSSH_RECORDINGS`` JetStream stream: session recordings, with size and age limits.

policy creates it at start, as it creates ``MESHSSH_AUDIT``; sshd only publishes into it, on
its own subjects ``meshssh.rec.v1.<peer>.<session>`` (a peer's credentials allow nothing else).
The oldest recordings go first when the stream is full or they are older than the age limit.

The first message is the session's asciicast v2 header line; the next ones are batches of
raw events (:mod:`meshssh_common.recording_format`). Each message carries the header
:data:`SIZE_HEADER`: the recording's stored bytes up to and including it (what it takes in the
stream, not the size of the asciicast file, which is written on read).
:func:`read_recording` turns the messages back into the asciicast v2 file
(:func:`recording_chunks` yields it one message at a time, for a response that streams), at
most :data:`MAX_CAST` bytes of it; :func:`list_recordings` reads each recording's first
message (who, where, when) and last one (its stored size, and its duration: the time of its
last event).

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
from meshssh_common.errors import NotFound, WireError
from meshssh_common.kv import default_replicas
from meshssh_common.recording_format import CastWriter, last_event_time, unpack_chunk

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "MAX_CAST",
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
SIZE_HEADER = "Meshssh-Rec-Bytes"  # on each message: stored bytes up to and including it
MAX_CAST = 256 * 2**20  # the most asciicast one read produces (it may be held in memory)


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
    size: int = 0  # stored bytes (0: not known, a recorder older than the header)

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
    """The first stored message of ``subject`` at or after ``seq``, as it is stored."""
    msg = await js.get_msg(subjects.RECORDINGS_STREAM, seq=seq, subject=subject, next=True)
    return int(msg.seq or 0), msg.data or b""


async def _tail(js: JetStreamContext, subject: str) -> tuple[float, int]:
    """(duration, stored size) of a recording, from its last message.

    Raises:
        WireError: a last message that does not unpack.
    """
    msg = await js.get_last_msg(subjects.RECORDINGS_STREAM, subject)
    size = (msg.headers or {}).get(SIZE_HEADER, "")
    return last_event_time(unpack_chunk(msg.data or b"")), int(size) if str(size).isdigit() else 0


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
        except WireError:
            data, duration, size = b"", 0.0, 0  # listed; reading it says what is wrong
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


async def recording_chunks(
    js: JetStreamContext, subject: str, count: int, *, limit: int = MAX_CAST
) -> AsyncIterator[bytes]:
    """One recording as asciicast v2 (what :func:`find_recording` found), a piece a message.

    Raises:
        WireError: a stored message that does not unpack, or a file that would be larger than
            ``limit`` bytes (refused before the piece that crosses it is yielded).
        nats.errors.Error: JetStream stopped answering.
    """
    writer = CastWriter()
    seq = 1
    written = 0
    for _ in range(count):
        try:
            at, data = await _first(js, subject, seq)
        except nats.js.errors.NotFoundError:
            break  # the rest aged out (or was never stored)
        piece = writer.feed(unpack_chunk(data))
        written += len(piece)
        if written > limit:
            raise WireError(
                f"recording {subject.rsplit('.', 1)[1]!r} is more than {limit >> 20} MiB as "
                "asciicast: too large to read"
            )
        yield piece
        seq = at + 1
    if tail := writer.finish():
        yield tail


async def read_recording(js: JetStreamContext, session_id: str, *, limit: int = MAX_CAST) -> bytes:
    """The asciicast v2 file of one session, from its messages in order.

    Raises:
        BadRequest: not a session id. WireError: a stored message that does not unpack, or a
        file larger than ``limit``. NotFound: no such recording. nats.errors.Error: no answer
        from JetStream.
    """
    subject, count = await find_recording(js, session_id)
    return b"".join([data async for data in recording_chunks(js, subject, count, limit=limit)])
