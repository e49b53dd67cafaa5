"""Session rules of ``ssh`` rules, with real OpenSSH clients: the idle timeout ends a PTY
session within a second of its limit (output keeps it alive), the maximum length ends a busy
session, and the check period refuses a login whose sign-in is too old until a new one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from meshssh_common.wire import SessionRules
from meshssh_sshd.session_clock import IDLE_TEXT, MAX_TEXT

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory


async def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 15.0) -> float:
    """Read the PTY until ``needle`` shows; the monotonic time it showed."""
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
    return time.monotonic()


async def _server(mesh: Mesh, factory: SshdFactory, rules: SessionRules) -> Sshd:
    await mesh.publish_map(grants=[("alice-id", "*")], session_rules={("alice-id", "*"): rules})
    return await factory.start()


async def test_an_idle_pty_session_ends_within_a_second_of_its_limit_and_output_keeps_it_alive(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    server = await _server(mesh, sshd_factory, SessionRules(idle_timeout=2))
    client = client_for(server)
    master, slave = os.openpty()
    os.set_blocking(master, False)
    # Output after 1.5 s (before the limit) restarts the idle clock; then it is quiet.
    program = "echo ready; sleep 1.5; echo tick; sleep 30; echo never"
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("-tt", program, user=local_user),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **client.env(issuer.mint("alice-id")), "TERM": "xterm"},
    )
    os.close(slave)
    seen = bytearray()
    try:
        ready_at = await _read_until(master, b"ready", seen)
        tick_at = await _read_until(master, b"tick", seen)
        ended_at = await _read_until(master, b"idle timeout", seen)
        async with asyncio.timeout(10):
            status = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        os.close(master)
    assert tick_at - ready_at > 1.0  # not ended at 2 s after "ready": output reset the clock
    assert 2.0 - 0.1 <= ended_at - tick_at <= 2.0 + 1.0, ended_at - tick_at
    assert IDLE_TEXT.format(n=2).encode() in seen
    assert b"never" not in seen
    assert status == 255
    event = await mesh.wait_audit(lambda e: e.kind == "session-limit")
    assert (event.reason, event.jwt_user, event.local_user) == (
        "idle_timeout",
        "alice-id",
        local_user,
    )
    end = await mesh.wait_audit(lambda e: e.kind == "session-end")
    assert end.reason == "idle_timeout"
    assert server.metric("meshssh_sshd_session_limits_total", reason="idle_timeout") == 1


async def test_a_busy_session_ends_at_its_maximum_length_with_its_own_text(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    server = await _server(mesh, sshd_factory, SessionRules(idle_timeout=60, max_session=2))
    client = client_for(server)
    started = time.monotonic()
    result = await client.ssh(
        "while :; do echo x; sleep 0.2; done",
        token=issuer.mint("alice-id"),
        user=local_user,
        timeout=20,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 255, result.err
    assert MAX_TEXT.format(n=2) in result.err
    assert result.out.count("x") >= 5  # it ran, busy, until the limit
    assert 2.0 <= elapsed <= 2.0 + 2.5, elapsed  # includes the client's connect and login
    event = await mesh.wait_audit(lambda e: e.kind == "session-limit")
    assert event.reason == "max_session"
    assert server.metric("meshssh_sshd_session_limits_total", reason="max_session") == 1


async def test_sessions_without_rules_have_no_limits(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(
        grants=[("alice-id", "*"), ("bob-id", "*")],
        session_rules={("bob-id", "*"): SessionRules(idle_timeout=1)},
    )
    server = await sshd_factory.start()
    client = client_for(server)
    result = await client.ssh(
        "sleep 1.6; echo done", token=issuer.mint("alice-id"), user=local_user
    )
    assert (result.returncode, result.out) == (0, "done\n"), result.err
    result = await client.ssh("sleep 1.6; echo done", token=issuer.mint("bob-id"), user=local_user)
    assert result.returncode == 255
    assert "idle timeout" in result.err


async def test_a_check_period_refuses_an_old_login_until_the_user_signs_in_again(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    server = await _server(mesh, sshd_factory, SessionRules(check_period=60))
    client = client_for(server)
    now = int(time.time())
    # A fresh token (renewed a minute ago) of a sign-in two minutes old: refused.
    old = issuer.mint("alice-id", auth_time=now - 120)
    result = await client.ssh("true", token=old, user=local_user)
    assert result.returncode == 255
    assert "re-authenticate" in result.err
    assert "this peer wants a login at most 60 s old" in result.err
    # No auth_time: the token's own age counts.
    result = await client.ssh("true", token=issuer.mint("alice-id", age=90), user=local_user)
    assert result.returncode == 255
    assert "re-authenticate" in result.err
    # After signing in again, the login is accepted.
    fresh = issuer.mint("alice-id", auth_time=now)
    result = await client.ssh("echo in", token=fresh, user=local_user)
    assert (result.returncode, result.out) == (0, "in\n"), result.err
    rejected = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert (rejected.reason, rejected.jwt_user) == ("check_period", "alice-id")
    assert server.metric("meshssh_sshd_auth_rejects_total", reason="check_period") == 2
