"""The device page shows what a code approves and wants it confirmed (RFC 8628 §5.4); user
codes cannot be enumerated (attempt limits per address and overall, RFC 8628 §5.1/§6.1)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from meshssh_authn.code_attempts import CodeAttempts
from meshssh_authn.device_grants import normalize_user_code
from meshssh_common import subjects
from meshssh_common.rpc import request
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
)
from meshssh_testkit import NatsServer

if TYPE_CHECKING:
    from conftest import AuthnFactory, Kv

START = DeviceStartRequest(
    peer_id="peer-7f3a",
    peer_name="db-prod-1",
    login_hint="postgres",
    source_addr="100.64.0.9:51234",
    source_peer="peer-0c1d",
    source_peer_name="alice-laptop",
)


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


async def test_the_page_shows_server_user_source_and_time_and_approval_needs_the_box(
    authn: AuthnFactory,
    users_file: Path,
    kv: Kv,
    passwords: dict[str, str],
    nats_server: NatsServer,
) -> None:
    await authn.start("--users-file", str(users_file), "--device-poll-interval", "0")
    await kv.wait_snapshot()
    nc = await nats_server.connect(nats_server.peer_creds("peer-7f3a"))  # as an SSH server
    try:
        started = await request(nc, subjects.device_start("peer-7f3a"), START, DeviceStartReply)
        poll = DevicePollRequest(device_code=started.device_code)
        async with httpx.AsyncClient(timeout=10) as http:
            first = await http.get(started.verification_uri)
            assert 'name="user_code"' in first.text
            assert 'name="password"' not in first.text  # step one asks for the code only
            page = await http.get(started.verification_uri_complete)
            assert page.status_code == 200
            text = _text(page.text)
            for shown in (
                "db-prod-1 (peer-7f3a)",
                "postgres",
                "alice-laptop, address 100.64.0.9:51234",
                "UTC",
            ):
                assert shown in text, shown
            assert 'name="confirm"' in page.text
            form = {
                "user_code": started.user_code,
                "username": "alice",
                "password": passwords["alice"],
                "action": "approve",
            }
            unconfirmed = await http.post(started.verification_uri, data=form)
            assert unconfirmed.status_code == 400
            assert "tick the box" in unconfirmed.text
            assert "db-prod-1" in unconfirmed.text  # the context is shown again
            pending = await request(nc, subjects.device_poll("peer-7f3a"), poll, DevicePollReply)
            assert pending.status == "pending"
            done = await http.post(started.verification_uri, data={**form, "confirm": "yes"})
            assert done.status_code == 200
            assert "You are signed in" in done.text
        approved = await request(nc, subjects.device_poll("peer-7f3a"), poll, DevicePollReply)
        assert approved.status == "ok"
    finally:
        await nc.close()


async def test_escaped_context_and_a_meshssh_login_flow_says_so(
    authn: AuthnFactory, users_file: Path, kv: Kv, nats_server: NatsServer
) -> None:
    await authn.start("--users-file", str(users_file))
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    nc = await nats_server.connect(nats_server.peer_creds("p1"))
    try:
        hostile = DeviceStartRequest(peer_id="p1", login_hint="<script>x</script>")
        started = await request(nc, subjects.device_start("p1"), hostile, DeviceStartReply)
    finally:
        await nc.close()
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(started.verification_uri_complete)
        assert "<script>" not in page.text
        assert "&lt;script&gt;x&lt;/script&gt;" in page.text
        local = (
            await http.post(
                snap.client.device_authorization_endpoint, data={"client_id": "meshssh"}
            )
        ).json()
        own = await http.get(local["verification_uri_complete"])
        assert "meshssh login" in _text(own.text)


async def test_unknown_codes_are_limited_per_address(
    authn: AuthnFactory, users_file: Path, kv: Kv, nats_server: NatsServer
) -> None:
    replica = await authn.start(
        "--users-file", str(users_file), "--device-code-misses-per-source", "3"
    )
    await kv.wait_snapshot()
    nc = await nats_server.connect(nats_server.peer_creds("peer-7f3a"))
    try:
        started = await request(nc, subjects.device_start("peer-7f3a"), START, DeviceStartReply)
    finally:
        await nc.close()
    async with httpx.AsyncClient(timeout=10) as http:
        for guess in ("BBBB-BBBB", "BBBB-BBBC", "BBBB-BBBD"):
            miss = await http.get(started.verification_uri, params={"user_code": guess})
            assert miss.status_code == 400
        # Now even the right code is not looked up from this address.
        blocked = await http.get(started.verification_uri_complete)
        assert blocked.status_code == 429
        assert "wait a few minutes" in blocked.text
        posted = await http.post(
            started.verification_uri,
            data={"user_code": started.user_code, "username": "a", "password": "b"},
        )
        assert posted.status_code == 429
    assert replica.sample("meshssh_authn_login_failures_total", {"reason": "code_throttled"}) == 2


def test_code_attempts_per_source_overall_window_and_memory() -> None:
    now = [0.0]
    attempts = CodeAttempts(per_source=2, overall=5, window=10, max_sources=3, clock=lambda: now[0])
    attempts.missed("a")
    assert not attempts.blocked("a")
    attempts.missed("a")
    assert attempts.blocked("a")
    assert not attempts.blocked("b")
    for source in ("b", "c", "d"):
        attempts.missed(source)
    assert attempts.blocked("e")  # five misses overall: nobody is looked up
    now[0] = 10.5
    assert not attempts.blocked("a")  # the window passed
    assert len(attempts._sources) <= 3


def test_user_codes_have_34_bits_and_accept_any_spelling() -> None:
    # 8 characters from a 20-letter alphabet: 20**8 > 2**34 (RFC 8628 §6.1 example).
    assert 20**8 > 2**34
    assert normalize_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalize_user_code("BCDF GHJK") == "BCDFGHJK"
    assert normalize_user_code("AEIO-UBCD") == ""  # vowels are not in the alphabet
    assert normalize_user_code("BCDF-GHJ") == ""
