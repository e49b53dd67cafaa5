"""The dashboard's recordings over real HTTP: a real policy, authn's embedded provider and
nats-server holding a recording as sshd stores it (header line, then packed event batches, each
with its stored-size header). Admins see the list (stored size, duration), the player page and
the cast (asciicast written on read, the same bytes as ``meshctl sessions export``); everyone
else is refused; unknown ids are 404."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.errors import WireError
from meshssh_common.recording_format import EVENTS_MAGIC, append_event, pack_chunk
from meshssh_common.recording_stream import SIZE_HEADER, list_recordings, read_recording
from meshssh_common.wire import AuditEvent
from meshssh_policy.web.recording_pages import duration_text, size_text
from meshssh_testkit import script
from meshssh_testkit.dashboard import sign_in
from meshssh_testkit.process import run_command

if TYPE_CHECKING:
    from conftest import Site

TOKEN = "test-admin-token-0123456789"  # the policy fixture's admin token
SESSION = "5e55a0b1c2d3"
CAST_TYPE = "application/x-asciicast"


EVENTS = [
    [0.1, "o", "hello \x1b[1mbold\x1b[0m\r\n"],
    [0.2, "r", "80x24"],
    [75.25, "o", "caf\u00e9 \u2713 done\r\n"],
]


async def store_recording(nc: NATS, peer: str, session: str, *, sized: bool = True) -> int:
    """A recording as sshd's recorder publishes it; returns its stored size."""
    header = {
        "version": 2,
        "width": 100,
        "height": 30,
        "timestamp": int(time.time()) - 60,
        "env": {"TERM": "xterm-256color"},
        "meshssh": {"user": "alice", "local_user": "deploy", "source": "127.0.0.3:50000"},
    }
    batches = [bytearray(EVENTS_MAGIC), bytearray(EVENTS_MAGIC)]
    for i, (at, code, text) in enumerate(EVENTS):
        append_event(batches[i // 2], float(at), str(code), str(text).encode())
    chunks = [json.dumps(header).encode() + b"\n", *(pack_chunk(b) for b in batches)]
    js = nc.jetstream()
    offset = 0
    for chunk in chunks:
        offset += len(chunk)
        headers = {SIZE_HEADER: str(offset)} if sized else None
        await js.publish(subjects.recording(peer, session), chunk, timeout=5, headers=headers)
    return offset


def cast_events(cast: bytes) -> list[object]:
    """The event lines of an asciicast v2 file, parsed (its first line is the header)."""
    return [json.loads(line) for line in cast.decode().splitlines()[1:]]


async def meshctl_export(api: str, session: str) -> bytes:
    result = await run_command(
        script("meshctl"),
        "sessions",
        "export",
        session,
        env={"MESHSSH_API_URL": api, "MESHSSH_ADMIN_TOKEN": TOKEN},
        timeout=30,
    )
    assert result.returncode == 0, result.err
    return result.stdout


def reads(site: Site, result: str) -> float:
    return float(site.replica.metric("meshssh_policy_recording_reads_total", result=result))


async def test_admins_list_and_play_recordings_and_the_cast_is_what_meshctl_exports(
    site: Site, nc: NATS
) -> None:
    base = site.base
    stored = await store_recording(nc, site.peer, SESSION)  # bytes in the stream
    # A session-end in the audit log links to its recording.
    end = AuditEvent(
        kind="session-end", peer_id=site.peer, at=time.time(), session_id=SESSION, jwt_user="alice"
    )
    await nc.jetstream().publish(
        subjects.audit_event(end.kind, end.peer_id), codec.encode(end), timeout=5
    )

    async with httpx.AsyncClient(timeout=10) as anonymous:
        page = await anonymous.get(f"{base}/recordings/{SESSION}")
        assert page.status_code == 303
        assert page.headers["location"] == f"/auth/login?next=/recordings/{SESSION}"
        assert (await anonymous.get(f"{base}/recordings")).status_code == 303
        cast = await anonymous.get(f"{base}/recordings/{SESSION}/cast")
        assert cast.status_code == 401
        assert SESSION.encode() not in cast.content
        assert b"hello" not in cast.content
    assert reads(site, "unauthenticated") == 1

    bob, _ = await sign_in(base, "bob", "bob-password-0123")
    alice, _ = await sign_in(base, "alice", "alice-password-0123")
    try:
        for path in ("/recordings", f"/recordings/{SESSION}", f"/recordings/{SESSION}/cast"):
            refused = await bob.get(base + path)
            assert refused.status_code == 403, (path, refused.text)
            assert "not a dashboard admin" in refused.text
            assert b"hello" not in refused.content
        assert reads(site, "denied") == 3
        bob_audit = await bob.get(f"{base}/audit")
        assert 'href="/recordings"' not in bob_audit.text  # no menu entry for read-only users
        assert f"/recordings/{SESSION}" not in bob_audit.text

        listing = await alice.get(f"{base}/recordings")
        assert listing.status_code == 200, listing.text
        assert 'href="/recordings" aria-current="page"' in listing.text
        row = listing.text.split(f'data-recording="{SESSION}"', 1)[1].split("</tr>", 1)[0]
        size = size_text(stored)  # the stored size, from the size header of the last message
        for shown in ("alice", "deploy", "srv", "127.0.0.3:50000", "1 min 15 s", size):
            assert shown in row, (shown, row)

        player = await alice.get(f"{base}/recordings/{SESSION}")
        assert player.status_code == 200, player.text
        csp = player.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in csp
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert f'data-cast="/recordings/{SESSION}/cast"' in player.text
        assert '<script src="/static/asciinema-player-3.18.0.min.js" defer>' in player.text
        for asset in ("asciinema-player-3.18.0.min.js", "asciinema-player-3.18.0.css"):
            got = await alice.get(f"{base}/static/{asset}")
            assert got.status_code == 200, asset
            assert len(got.content) > 10_000, asset
        # Only the player's page may compile WebAssembly.
        peers = await alice.get(f"{base}/peers")
        assert "wasm-unsafe-eval" not in peers.headers["content-security-policy"]

        cast = await alice.get(f"{base}/recordings/{SESSION}/cast")
        assert cast.status_code == 200
        assert cast.headers["content-type"] == CAST_TYPE
        assert cast.headers["cache-control"] == "no-store"
        assert cast.headers["x-content-type-options"] == "nosniff"
        assert json.loads(cast.content.split(b"\n", 1)[0])["width"] == 100
        assert cast_events(cast.content) == EVENTS  # asciicast, written from the stored events
        assert cast.content == await meshctl_export(site.replica.url, SESSION)
        assert reads(site, "served") == 1

        for unknown in ("000000000000", "not.an.id", "x" * 65, "a%20b"):
            missing = await alice.get(f"{base}/recordings/{unknown}/cast")
            assert missing.status_code == 404, (unknown, missing.text)
            page = await alice.get(f"{base}/recordings/{unknown}")
            assert page.status_code == 404, (unknown, page.text)
        assert reads(site, "not_found") == 4

        audit = await alice.get(f"{base}/audit?kind=session-end")
        assert f'href="/recordings/{SESSION}"' in audit.text
    finally:
        await alice.aclose()
        await bob.aclose()

    async with site.replica.client() as api:
        listed = (await api.get("/api/v1/recordings")).json()
    assert [(r["session"], r["duration"], r["size"]) for r in listed] == [(SESSION, 75.25, stored)]


async def test_a_recording_without_size_headers_lists_its_size_as_unknown(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(name=subjects.RECORDINGS_STREAM, subjects=[subjects.RECORDINGS_SUBJECTS])
    await store_recording(nc, "web1", "0ldrec0rding1", sized=False)
    header = b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n'
    await js.publish(subjects.recording("web1", "headeronly01"), header, timeout=5)
    found = {r.session: r for r in await list_recordings(js)}
    assert (found["0ldrec0rding1"].duration, found["0ldrec0rding1"].size) == (75.25, 0)
    assert size_text(found["0ldrec0rding1"].size) == "-"
    # a recording whose events are not stored yet: only its header line
    assert found["headeronly01"].duration == 0.0
    # A read produces at most `limit` bytes of asciicast: a larger file is refused, not held.
    whole = await read_recording(js, "0ldrec0rding1")
    assert cast_events(whole) == EVENTS
    with pytest.raises(WireError, match="too large to read"):
        await read_recording(js, "0ldrec0rding1", limit=len(whole) - 1)
    # A message that is not a recorder's is refused with a clear error, not passed on.
    await store_recording(nc, "web1", "garbage00001")
    await js.publish(subjects.recording("web1", "garbage00001"), b"\x01not a recording", timeout=5)
    with pytest.raises(WireError, match="neither an asciicast v2 header line nor a batch"):
        await read_recording(js, "garbage00001")
    assert "garbage00001" in {r.session for r in await list_recordings(js)}


def test_durations_and_sizes_read_as_people_write_them() -> None:
    assert [duration_text(s) for s in (0, 4.24, 59.94, 60, 185.9, 3600, 7620)] == [
        "0.0 s",
        "4.2 s",
        "59.9 s",
        "1 min 00 s",
        "3 min 05 s",
        "1 h 00 min",
        "2 h 07 min",
    ]
    assert [size_text(n) for n in (0, 1, 1023, 1024, 14_438, 3 * 2**20 + 2**19)] == [
        "-",
        "1 B",
        "1023 B",
        "1.0 KiB",
        "14.1 KiB",
        "3.5 MiB",
    ]
