"""The ``MESHSSH_RECORDINGS`` JetStream stream: session recordings, with size and age limits.

policy creates it at start, as it creates ``MESHSSH_AUDIT``; sshd only publishes into it, on
its own subjects ``meshssh.rec.v1.<peer>.<session>`` (a peer's credentials allow nothing else).
The oldest recordings go first when the stream is full or they are older than the age limit.

The first message is the session's asciicast v2 header line; the next ones are batches of
raw events, most of them zstd-compressed (:mod:`meshssh_common.recording_format`).
:func:`read_recording` turns them back into the asciicast v2 file, :func:`list_recordings`
reads each first message.

Example::

    await ensure_recordings_stream(js, max_bytes=10 * 2**30, max_age=90 * 86400)
    for info in await list_recordings(js):
        cast = await read_recording(js, info.session)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from meshssh_common import subjects
from meshssh_common.errors import NotFound, WireError
from meshssh_common.kv import default_replicas
from meshssh_common.recording_format import CastWriter, unpack_chunk

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "MAX_CHUNK",
    "RecordingInfo",
    "ensure_recordings_stream",
    "list_recordings",
    "read_recording",
]

DEFAULT_MAX_BYTES = 10 * 2**30
DEFAULT_MAX_AGE = 90 * 86400.0
MAX_CHUNK = 256 * 1024  # the largest message a recorder publishes (under NATS' 1 MiB default)


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
    return int(msg.seq or 0), unpack_chunk(msg.data or b"")


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
        except nats.js.errors.NotFoundError:
            continue  # aged out between the two calls
        except WireError:
            data = b""  # listed, with an empty header; reading it says what is wrong
        out.append(_header(data, session, peer, chunks))
    out.sort(key=lambda r: (r.started_at, r.session), reverse=True)
    return out


async def read_recording(js: JetStreamContext, session_id: str) -> bytes:
    """The asciicast v2 file of one session, from its messages in order.

    Raises:
        BadRequest: not a session id. WireError: a stored chunk that does not unpack.
        NotFound: no such recording. nats.errors.Error: no answer from JetStream.
    """
    found = await _subjects(js, subjects.recording_any_peer(session_id))
    if not found:
        raise NotFound(f"no recording of session {session_id!r}")
    subject, count = sorted(found.items())[0]
    parts: list[bytes] = []
    writer = CastWriter()
    seq = 1
    for _ in range(count):
        try:
            at, data = await _first(js, subject, seq)
        except nats.js.errors.NotFoundError:
            break
        parts.append(writer.feed(data))
        seq = at + 1
    return b"".join(parts)
