"""The stored form of a recording: raw event batches, packed with zstd when that is smaller,
turned back into the asciicast v2 a live JSON encoder would have written; corrupt or
oversized frames are refused with a clear error instead of being unpacked."""

from __future__ import annotations

import json
import os

import pytest
import zstandard

from meshssh_common.errors import WireError
from meshssh_common.recording_format import (
    EVENT_PIECE,
    EVENTS_MAGIC,
    MAX_PIECE,
    CastWriter,
    append_event,
    pack_chunk,
    unpack_chunk,
)


def _lines(cast: bytes) -> list[list[object]]:
    return [json.loads(line) for line in cast.decode().splitlines()]


def test_events_turn_into_the_asciicast_lines_a_live_encoder_writes() -> None:
    header = b'{"version": 2, "width": 80, "height": 24}\n'
    check = "\u2713".encode()  # three bytes, cut between two reads below
    batch = bytearray(EVENTS_MAGIC)
    append_event(batch, 0.1234567, "o", b"hello \x1b[1m" + check[:1])
    append_event(batch, 0.5, "r", b"123x41")
    append_event(batch, 0.75, "o", check[1:] + b' "quoted"\r\n\xff')
    append_event(batch, 1.0, "i", b"ls\r")
    writer = CastWriter()
    cast = writer.feed(unpack_chunk(pack_chunk(header))) + writer.feed(
        unpack_chunk(pack_chunk(batch))
    )
    assert cast.startswith(header)
    assert _lines(cast)[1:] == [
        [0.123457, "o", "hello \x1b[1m"],  # the cut character waits for its other bytes
        [0.5, "r", "123x41"],
        [0.75, "o", '\u2713 "quoted"\r\n\ufffd'],  # invalid bytes as U+FFFD, as live
        [1.0, "i", "ls\r"],
    ]


def test_repetitive_output_is_stored_compressed_and_random_output_as_it_is() -> None:
    text = bytearray(EVENTS_MAGIC)
    append_event(text, 0.0, "o", b"the quick brown fox\r\n" * 3000)
    packed = pack_chunk(text)
    assert len(packed) * 100 < len(text)
    assert unpack_chunk(packed) == text
    noise = bytearray(EVENTS_MAGIC)
    append_event(noise, 0.0, "o", os.urandom(EVENT_PIECE))
    assert pack_chunk(noise) == noise  # stored as it is: zstd would not make it smaller


def test_a_big_output_is_cut_into_events_of_at_most_a_piece() -> None:
    batch = bytearray(EVENTS_MAGIC)
    data = b"x" * (EVENT_PIECE * 2 + 10)
    append_event(batch, 2.0, "o", data)  # one event as stored...
    events = _lines(CastWriter().feed(bytes(batch)))
    assert [len(str(e[2])) for e in events] == [EVENT_PIECE, EVENT_PIECE, 10]  # ...cut on read
    assert "".join(str(e[2]) for e in events) == data.decode()


def test_a_frame_claiming_more_than_a_piece_is_refused_unread() -> None:
    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * (MAX_PIECE + 1))
    assert len(bomb) < 1000
    with pytest.raises(WireError, match="claims"):
        unpack_chunk(bomb)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(WireError, match="claims"):  # no size in the frame: refused too
        unpack_chunk(streamed)


def test_corrupt_frames_and_cut_events_are_refused() -> None:
    packed = pack_chunk(bytearray(EVENTS_MAGIC) + b"y" * 5000)
    with pytest.raises(WireError, match="zstd"):
        unpack_chunk(packed[:-8] + b"\0" * 8)
    batch = bytearray(EVENTS_MAGIC)
    append_event(batch, 0.0, "o", b"hello")
    with pytest.raises(WireError, match="cut short"):
        CastWriter().feed(bytes(batch[:-1]))
    with pytest.raises(WireError, match="unknown kind"):
        CastWriter().feed(bytes(batch).replace(b"o\0\0\0", b"x\0\0\0", 1))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"hello\n", "neither"),
        (b'[0.5, "o", "hi"]\n', "neither"),  # an event line alone is not a message
        (b'{"version": 2\n', "not JSON"),
        (b'{"version": 1, "width": 80}\n', "not an asciicast v2 header"),
        (b"\x01\xfe\x80binary" * 8, "neither"),  # not JSON, not a zstd frame, not events
    ],
)
def test_garbage_messages_are_refused_with_a_clear_error(message: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        CastWriter().feed(unpack_chunk(message))
    # packed too: a zstd frame holding garbage is refused once unpacked
    with pytest.raises(WireError, match="neither"):
        CastWriter().feed(unpack_chunk(zstandard.ZstdCompressor().compress(b"x" * 500)))


def test_a_recording_that_ends_inside_a_character_ends_with_a_replacement() -> None:
    batch = bytearray(EVENTS_MAGIC)
    append_event(batch, 1.5, "o", b"ok \xe2\x9c")  # the first two bytes of a check mark
    writer = CastWriter()
    assert _lines(writer.feed(bytes(batch))) == [[1.5, "o", "ok "]]
    assert _lines(writer.finish()) == [[1.5, "o", "\ufffd"]]  # as a live decoder's last flush
    assert writer.finish() == b""
