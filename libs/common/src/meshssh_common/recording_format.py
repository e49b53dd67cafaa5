"""How a session recording is stored: messages of raw events, turned into asciicast v2 on read.

The first message of a recording is its asciicast v2 header line, as JSON. Every later message
is a batch of events as the session produced them: :data:`EVENTS_MAGIC`, then per event a
16-byte head (seconds since the start as a float64, the asciicast code ``o``, ``i`` or ``r``,
the data's length) and the bytes themselves, exactly as the client saw or sent them. A
message is stored as one zstd frame when that is smaller (terminal output shrinks 3 to 1000
times), else as it is; a zstd frame starts with bytes that neither JSON nor the magic start
with, so each message says itself how it is stored.

The recorder thus only copies bytes on the session's hot path; the JSON (UTF-8 decoding,
escaping) is written by :class:`CastWriter` when a recording is read, with the same events it
would have written live: one per piece of at most :data:`EVENT_PIECE` bytes, UTF-8 decoded
across pieces (a character cut between two reads is whole), invalid bytes as U+FFFD.

Example::

    buf = bytearray(EVENTS_MAGIC)
    append_event(buf, 0.25, "o", b"hello")
    message = pack_chunk(buf)          # what the recorder publishes
    writer = CastWriter()
    cast = writer.feed(unpack_chunk(header_message)) + writer.feed(unpack_chunk(message))
"""

from __future__ import annotations

import codecs
import struct
import threading

import msgspec
import zstandard

from meshssh_common.errors import BadReason, WireError

__all__ = [
    "EVENTS_MAGIC",
    "EVENT_HEAD",
    "EVENT_PIECE",
    "MAX_PIECE",
    "CastWriter",
    "append_event",
    "event_head",
    "last_event_time",
    "pack_chunk",
    "unpack_chunk",
]

EVENTS_MAGIC = b"\x00mrec1\n"  # a message of raw events (JSON starts with "{" or "[")
EVENT_HEAD = struct.Struct("<dcxxxI")  # seconds, code, length: 16 bytes
EVENT_PIECE = 64 * 1024  # the most data one event carries, stored or written as JSON
MAX_PIECE = 4 * 2**20  # the most bytes one message unpacks to (more is refused unread)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_LEVEL = 1  # the fastest level with the usual ratio; negative levels barely shrink text
_CODES = (b"o", b"i", b"r")
_local = threading.local()  # one compressor per thread (a context is ~1 MiB), not per session
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def event_head(at: float, code: str, length: int) -> bytes:
    """The head of one event: ``at`` seconds, code ``o``, ``i`` or ``r``, ``length`` bytes."""
    return EVENT_HEAD.pack(at, code.encode(), length)


def append_event(buf: bytearray, at: float, code: str, data: bytes | memoryview) -> None:
    """Add one event (``data`` at most :data:`EVENT_PIECE` bytes) to a message being built."""
    buf += event_head(at, code, len(data))
    buf += data


def _compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return compressor


def pack_chunk(piece: bytes | bytearray | memoryview) -> bytes:
    """``piece`` as stored: a zstd frame when that is smaller, else the piece itself."""
    packed = _compressor().compress(piece)
    return packed if len(packed) < len(piece) else bytes(piece)


def unpack_chunk(message: bytes) -> bytes:
    """What a stored message holds (:func:`pack_chunk` undone).

    Raises:
        WireError: a zstd frame that is corrupt, or that claims more than
            :data:`MAX_PIECE` bytes (no recorder writes one: a bomb is refused unread).
    """
    if not message.startswith(_ZSTD_MAGIC):
        return message
    try:
        size = zstandard.frame_content_size(message)
        if not 0 <= size <= MAX_PIECE:
            raise WireError(f"recording chunk claims {size} bytes (at most {MAX_PIECE})")
        piece = zstandard.ZstdDecompressor().decompress(message, max_output_size=MAX_PIECE)
    except zstandard.ZstdError as e:
        raise WireError(
            f"recording chunk is not a valid zstd frame: {e}", reason=BadReason.UNDECODABLE
        ) from e
    if len(piece) != size:
        raise WireError("recording chunk unpacked to another size than it claims")
    return piece


def last_event_time(message: bytes) -> float:
    """The time of the last event of an unpacked message (0.0 for the header line).

    Raises:
        WireError: an event that is cut short.
    """
    if not message.startswith(EVENTS_MAGIC):
        return 0.0
    at, seconds = len(EVENTS_MAGIC), 0.0
    while at < len(message):
        if at + EVENT_HEAD.size > len(message):
            raise WireError("recording event cut short")
        seconds, _, length = EVENT_HEAD.unpack_from(message, at)
        at += EVENT_HEAD.size + length
    if at != len(message):
        raise WireError("recording event cut short")
    return round(float(seconds), 6)


def _check_header(message: bytes) -> None:
    """Accept one asciicast v2 header line (what a recorder's first message is), else raise."""
    if not (message.startswith(b"{") and message.endswith(b"\n")):
        raise WireError(
            "recording message is neither an asciicast v2 header line nor a batch of events",
            reason=BadReason.UNDECODABLE,
        )
    try:
        head = _decode(message)
    except msgspec.DecodeError as e:
        raise WireError(
            f"recording header line is not JSON: {e}", reason=BadReason.UNDECODABLE
        ) from e
    if not isinstance(head, dict) or head.get("version") != 2:
        raise WireError("recording header line is not an asciicast v2 header")


class CastWriter:
    """Turns a recording's unpacked messages, fed in order, into asciicast v2 text."""

    def __init__(self) -> None:
        self._decoders = {
            code: codecs.getincrementaldecoder("utf-8")("replace") for code in ("o", "i")
        }
        self._last = 0.0  # the time of the last event written

    def feed(self, message: bytes) -> bytes:
        """The asciicast lines of one unpacked message (the header line is already asciicast).

        Raises:
            WireError: a message that is neither the header line nor a batch of events, or
                an event that is cut short or has an unknown code.
        """
        if not message.startswith(EVENTS_MAGIC):
            _check_header(message)
            return message
        out = bytearray()
        view = memoryview(message)
        at = len(EVENTS_MAGIC)
        while at < len(message):
            if at + EVENT_HEAD.size > len(message):
                raise WireError("recording event cut short")
            seconds, code, length = EVENT_HEAD.unpack_from(message, at)
            at += EVENT_HEAD.size
            if code not in _CODES or at + length > len(message):
                raise WireError("recording event cut short or of an unknown kind")
            data = view[at : at + length]
            at += length
            self._write(out, round(seconds, 6), code.decode(), data)
        return bytes(out)

    def finish(self) -> bytes:
        """The last lines: bytes of a character the recording ends in the middle of (U+FFFD)."""
        out = bytearray()
        for code, decoder in self._decoders.items():
            if text := decoder.decode(b"", final=True):
                out += _encode([self._last, code, text]) + b"\n"
        return bytes(out)

    def _write(self, out: bytearray, seconds: float, code: str, data: memoryview) -> None:
        self._last = seconds
        decoder = self._decoders.get(code)
        if decoder is None:  # a resize: "COLSxROWS"
            out += _encode([seconds, code, bytes(data).decode("ascii", "replace")]) + b"\n"
            return
        for start in range(0, len(data), EVENT_PIECE):
            text = decoder.decode(data[start : start + EVENT_PIECE])
            if text:
                out += _encode([seconds, code, text]) + b"\n"
