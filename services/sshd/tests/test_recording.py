"""Session recording with real OpenSSH sessions: a PTY session's recording holds exactly what
the client's terminal showed (no typed input unless the rule says so), its header says who and
where, resizes are recorded, non-PTY exec output is recorded with ``record_exec``, and
``required`` refuses a session when the stream is down and ends one when its acks stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.recording_format import EVENTS_MAGIC, unpack_chunk
from meshssh_common.recording_stream import (
    MAX_CHUNK,
    ensure_recordings_stream,
    list_recordings,
    read_recording,
)
from meshssh_common.wire import SessionRules
from meshssh_sshd import recorder
from meshssh_sshd.recorder import LOST_TEXT, UNAVAILABLE_TEXT
from meshssh_testkit.asciicast import Cast, parse_asciicast

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, SshdFactory

RECORD = SessionRules(recording="required")
RECORD_INPUT = SessionRules(recording="required", record_input=True)


async def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while needle not in seen:
            ready = asyncio.Event()
            loop.add_reader(fd, ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(fd)
            with contextlib.suppress(BlockingIOError, OSError):
                seen += os.read(fd, 65536)


async def _drain(fd: int, seen: bytearray, proc: asyncio.subprocess.Process) -> None:
    """Read the PTY until the client exited and nothing is left."""
    async with asyncio.timeout(15):
        while proc.returncode is None:
            with contextlib.suppress(BlockingIOError, OSError):
                seen += os.read(fd, 65536)
            await asyncio.sleep(0.02)
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            seen += chunk


def _set_size(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _recording(nc: NATS, count: int = 1, timeout: float = 10.0) -> list[Cast]:
    """The recordings in the stream, once ``count`` are there and stopped growing."""
    js = nc.jetstream()
    previous: list[bytes] = []
    async with asyncio.timeout(timeout):
        while True:
            infos = await list_recordings(js)
            current = [await read_recording(js, i.session) for i in sorted(infos, key=str)]
            if len(current) >= count and current == previous:
                return [parse_asciicast(c) for c in current]
            previous = current
            await asyncio.sleep(0.4)


@pytest.fixture
async def recordings(nc: NATS) -> NATS:
    await ensure_recordings_stream(nc.jetstream())
    return nc


async def _pty_session(
    client: Any, token: str, user: str, program: str, typed: bytes = b""
) -> tuple[bytes, int]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    _set_size(slave, 30, 100)
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("-tt", program, user=user),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **client.env(token), "TERM": "xterm-256color"},
    )
    os.close(slave)
    seen = bytearray()
    try:
        await _read_until(master, b"ready", seen)
        _set_size(master, 41, 123)
        proc.send_signal(signal.SIGWINCH)
        await _read_until(master, b"41 123", seen)
        if typed:
            await _read_until(master, b"secret?", seen)  # echo is off now
            os.write(master, typed)
        await _drain(master, seen, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        os.close(master)
    assert proc.returncode is not None
    return bytes(seen), proc.returncode


PROGRAM = (
    "trap 'stty size' WINCH; printf 'hello \\033[1mbold\\033[0m \\342\\234\\223\\n'; echo ready; "
    "while ! stty size | grep -q '41 123'; do sleep 0.05; done; "
    "stty -echo; echo secret?; read secret; stty echo; echo got-${#secret}; exit 3"
)


async def test_a_pty_recording_holds_what_the_client_saw_and_no_typed_input(
    recordings: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map(session_rules={("alice-id", "*"): RECORD})
    server = await sshd_factory.start()
    seen, status = await _pty_session(
        client_for(server), issuer.mint("alice-id"), local_user, PROGRAM, b"hunter2\r"
    )
    assert status == 3
    assert b"got-7" in seen
    (cast,) = await _recording(recordings)
    screen = seen.decode()
    recorded = cast.output()
    assert "hello \x1b[1mbold\x1b[0m \u2713" in recorded
    assert "got-7" in recorded
    assert recorded in screen  # byte for byte what the terminal got, in order
    # What the client saw and the recording lacks is only ssh's own closing line.
    assert screen.replace(recorded, "").strip() in ("", f"Connection to {server.host} closed.")
    assert "hunter2" not in recorded
    assert cast.of("i") == []
    assert cast.of("r") == ["123x41"]
    head = cast.header
    assert (head["width"], head["height"], head["env"]["TERM"]) == (100, 30, "xterm-256color")
    meta = head["meshssh"]
    assert (meta["user"], meta["local_user"], meta["peer"]) == ("alice-id", local_user, "server-1")
    assert meta["source"].startswith("127.0.0.3:")
    assert head["timestamp"] > 0
    assert server.metric("meshssh_sshd_recordings_total", mode="required", result="started") == 1
    assert server.metric("meshssh_sshd_recording_bytes_total", result="stored") > 0
    # Each message's size header lets a reader know a recording's stored size from its last.
    js = recordings.jetstream()
    (info,) = await list_recordings(js)
    assert info.size == server.metric("meshssh_sshd_recording_bytes_total", result="stored")
    assert info.size == await _stored_size(js, subjects.recording("server-1", info.session))
    assert info.duration == cast.events[-1][0]


async def _stored_size(js: Any, subject: str) -> int:
    """The bytes of a recording's messages as the stream holds them."""
    info = await js.stream_info(subjects.RECORDINGS_STREAM, subjects_filter=subject)
    size, seq = 0, 1
    for _ in range(info.state.subjects[subject]):
        msg = await js.get_msg(subjects.RECORDINGS_STREAM, seq=seq, subject=subject, next=True)
        size += len(msg.data)
        seq = msg.seq + 1
    return size


async def test_record_input_adds_keystrokes(
    recordings: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map(session_rules={("alice-id", "*"): RECORD_INPUT})
    server = await sshd_factory.start()
    await _pty_session(
        client_for(server), issuer.mint("alice-id"), local_user, PROGRAM, b"hunter2\r"
    )
    (cast,) = await _recording(recordings)
    assert "".join(cast.of("i")) == "hunter2\r"


async def test_exec_sessions_are_recorded_only_with_record_exec(
    recordings: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map(
        grants=[("alice-id", "*"), ("bob-id", "*")],
        session_rules={
            ("alice-id", "*"): RECORD,
            ("bob-id", "*"): SessionRules(recording="best_effort", record_exec=True),
        },
    )
    server = await sshd_factory.start()
    client = client_for(server)
    command = "echo out; echo err >&2"
    result = await client.ssh(command, token=issuer.mint("alice-id"), user=local_user)
    assert result.returncode == 0, result.err
    result = await client.ssh(command, token=issuer.mint("bob-id"), user=local_user)
    assert result.returncode == 0, result.err
    (cast,) = await _recording(recordings)
    assert cast.header["meshssh"]["user"] == "bob-id"
    assert sorted(cast.output().splitlines()) == ["err", "out"]


async def test_required_recording_with_the_stream_down_refuses_the_session(
    nc: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    # No MESHSSH_RECORDINGS stream: nothing acks.
    await mesh.publish_map(
        grants=[("alice-id", "*"), ("bob-id", "*")],
        session_rules={
            ("alice-id", "*"): RECORD,
            ("bob-id", "*"): SessionRules(recording="best_effort"),
        },
    )
    server = await sshd_factory.start()
    client = client_for(server)
    result = await client.ssh("-tt", "echo ran", token=issuer.mint("alice-id"), user=local_user)
    assert result.returncode == 1
    assert UNAVAILABLE_TEXT in result.out + result.err
    assert "ran" not in result.out
    event = await mesh.wait_audit(lambda e: e.kind == "recording-failed")
    assert (event.reason, event.jwt_user, event.result) == ("unavailable", "alice-id", "required")
    refused = server.metric("meshssh_sshd_session_refusals_total", reason="recording_unavailable")
    assert refused == 1
    # best_effort never blocks a session.
    result = await client.ssh("-tt", "echo ran", token=issuer.mint("bob-id"), user=local_user)
    assert (result.returncode, "ran" in result.out) == (0, True), result.err


async def test_a_required_recording_whose_acks_stop_ends_the_session(
    recordings: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map(session_rules={("alice-id", "*"): RECORD})
    server = await sshd_factory.start()
    client = client_for(server)
    master, slave = os.openpty()
    os.set_blocking(master, False)
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args(
            "-tt", "echo ready; while :; do echo x; sleep 0.1; done", user=local_user
        ),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **client.env(issuer.mint("alice-id")), "TERM": "xterm"},
    )
    os.close(slave)
    seen = bytearray()
    try:
        await _read_until(master, b"ready", seen)
        await recordings.jetstream().delete_stream(subjects.RECORDINGS_STREAM)
        await _read_until(master, b"its recording stopped", seen, timeout=10)
        async with asyncio.timeout(10):
            status = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        os.close(master)
    assert status == 255
    assert LOST_TEXT in seen.decode().replace("\r\n", "\n")
    event = await mesh.wait_audit(lambda e: e.kind == "recording-failed")
    assert event.reason == "lost"
    assert server.metric("meshssh_sshd_recordings_total", mode="required", result="lost") == 1


async def test_a_required_recording_paces_a_fast_program_instead_of_losing_output(
    recordings: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A backlog limit of two chunks, so that 24 MiB of output would overflow it many times
    # over if the recorder did not pause the program's output.
    monkeypatch.setattr(recorder, "MAX_BACKLOG", 2 * MAX_CHUNK)
    monkeypatch.setattr(recorder, "HIGH_WATER", MAX_CHUNK)
    monkeypatch.setattr(recorder, "LOW_WATER", MAX_CHUNK // 2)
    size = 24 * 2**20
    rules = SessionRules(recording="required", record_exec=True)
    await mesh.publish_map(session_rules={("alice-id", "*"): rules})
    server = await sshd_factory.start()
    result = await client_for(server).ssh(
        f"head -c {size} /dev/zero | tr '\\0' a",
        token=issuer.mint("alice-id"),
        user=local_user,
        timeout=120,
    )
    assert result.returncode == 0, result.err
    assert len(result.stdout) == size
    (cast,) = await _recording(recordings, timeout=60)
    assert cast.output() == "a" * size
    assert server.metric("meshssh_sshd_recording_bytes_total", result="dropped") == 0


async def test_output_that_stops_compressing_is_stored_in_messages_under_the_limit(
    recordings: NATS,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    # 8 MiB of one letter (batches of 2 MiB, each a tiny zstd frame), then 3 MiB of noise
    # (zstd cannot shrink it: the recorder cuts its batch into raw messages of MAX_CHUNK).
    rules = SessionRules(recording="required", record_exec=True)
    await mesh.publish_map(session_rules={("alice-id", "*"): rules})
    server = await sshd_factory.start()
    result = await client_for(server).ssh(
        "head -c 8388608 /dev/zero | tr '\\0' b; head -c 3145728 /dev/urandom",
        token=issuer.mint("alice-id"),
        user=local_user,
        timeout=120,
    )
    assert result.returncode == 0, result.err
    assert len(result.stdout) == 11 * 2**20
    (cast,) = await _recording(recordings, timeout=60)
    assert cast.output() == result.stdout.decode("utf-8", "replace")
    js = recordings.jetstream()
    (info,) = await list_recordings(js)
    subject = subjects.recording("server-1", info.session)
    stored: list[tuple[bytes, bytes]] = []  # (message, what it unpacks to)
    seq = 1
    for _ in range(info.chunks):
        msg = await js.get_msg(subjects.RECORDINGS_STREAM, seq=seq, subject=subject, next=True)
        assert msg.data is not None
        assert msg.seq is not None
        stored.append((msg.data, unpack_chunk(msg.data)))
        seq = msg.seq + 1
    assert max(len(m) for m, _ in stored) <= MAX_CHUNK
    assert max(len(u) for _, u in stored) > MAX_CHUNK  # compressed batches carry more
    assert any(m == u and m.startswith(EVENTS_MAGIC) for m, u in stored)  # noise: raw
    assert server.metric("meshssh_sshd_recording_bytes_total", result="dropped") == 0
