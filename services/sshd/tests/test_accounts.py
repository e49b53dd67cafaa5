"""Account status as OpenSSH applies it (SPEC §7): locked and expired accounts get no session
of any kind; nologin/false shells get no shell, exec or SFTP ("This account is currently not
available.") but forwarding still works; SFTP runs as the user through the user's shell.

Each test makes its own throwaway account (as root; unique name; always removed)."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshssh_sshd.shadow import ShadowEntry, account_status, read_shadow, today
from meshssh_testkit.os_users import throwaway_user
from meshssh_testkit.plugin import need_tool

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create accounts")


def _entry(password: str = "*", *, last: int = 19000, mx: int = -1, inact: int = -1, exp: int = -1):
    return ShadowEntry(password, last, mx, inact, exp)


@pytest.mark.parametrize(
    ("entry", "status"),
    [
        (None, ""),
        (_entry("*"), ""),
        (_entry("$6$salt$hash"), ""),
        (_entry("!"), "locked"),
        (_entry("!$6$salt$hash"), "locked"),
        (_entry("!!"), "locked"),
        (_entry("*LK*"), "locked"),
        (_entry(exp=20000), ""),  # expires on day 20000: still valid that day
        (_entry(exp=19999), "expired"),
        (_entry(exp=0), "expired"),
        (_entry(last=19000, mx=900, inact=100), ""),  # 20000 is the last usable day
        (_entry(last=19000, mx=900, inact=50), "inactive"),
        (_entry(last=19000, mx=900), ""),  # aged password: no password is used, no refusal
        (_entry(last=0, mx=900, inact=0), ""),  # "must change" is not an expiry
    ],
)
def test_account_status_follows_openssh(entry: ShadowEntry | None, status: str) -> None:
    assert account_status(entry, 20000) == status


async def _admin(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, argv


@pytest.fixture
def fresh_user() -> Iterator[str]:
    need_tool(os.geteuid() == 0, "root (to create accounts)")
    with throwaway_user() as name:
        yield name


@pytest.fixture
def nologin_user() -> Iterator[str]:
    need_tool(os.geteuid() == 0, "root (to create accounts)")
    with throwaway_user("/usr/sbin/nologin") as name:
        yield name


@pytest.fixture
async def full_server(mesh: Mesh, sshd_factory: SshdFactory) -> Sshd:
    await mesh.publish_map()
    return await sshd_factory.start(enable_ssh_sftp=True, enable_ssh_local_port_forwarding=True)


@root_only
def test_read_shadow_sees_a_real_lock_and_expiry(fresh_user: str) -> None:
    assert account_status(read_shadow(fresh_user), today()) == ""
    subprocess.run(["usermod", "-L", fresh_user], check=True, timeout=30)
    assert account_status(read_shadow(fresh_user), today()) == "locked"
    subprocess.run(["usermod", "-p", "*", fresh_user], check=True, timeout=30)
    subprocess.run(["chage", "-E", "0", fresh_user], check=True, timeout=30)
    assert account_status(read_shadow(fresh_user), today()) == "expired"
    assert read_shadow(f"nosuch{uuid.uuid4().hex[:8]}") is None


@pytest.mark.parametrize("how", ["locked", "expired"])
async def test_locked_or_expired_account_gets_no_session_of_any_kind(
    how: str,
    fresh_user: str,
    full_server: Sshd,
    client_for: Any,
    issuer: Issuer,
    mesh: Mesh,
    tmp_path: Path,
) -> None:
    if how == "locked":
        await _admin("usermod", "-L", fresh_user)
    else:
        await _admin("chage", "-E", "1", fresh_user)
    client = client_for(full_server)
    token = issuer.mint("alice-id")
    shell = await client.ssh(token=token, user=fresh_user, input=b"exit\n")
    exec_ = await client.ssh("echo ran", token=token, user=fresh_user)
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    sftp = await client.tool(
        "sftp", "-b", str(batch), f"{fresh_user}@{full_server.host}", token=token
    )
    forward = await client.ssh("-W", "127.0.0.1:9", token=token, user=fresh_user)
    for result in (shell, exec_, sftp, forward):
        assert result.returncode != 0, result.err
        assert "ran" not in result.out
        assert f"account {fresh_user} is {how}" in result.err or "has expired" in result.err
    label = f"account_{how}"
    assert full_server.metric("meshssh_sshd_auth_rejects_total", reason=label) >= 4
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected" and e.reason == label)
    assert event.local_user == fresh_user


async def test_accept_locked_accounts_lets_a_locked_account_in_but_not_an_expired_one(
    fresh_user: str, mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_locked_accounts=True)
    client = client_for(sshd)
    await _admin("usermod", "-L", fresh_user)
    ok = await client.ssh("echo in", token=issuer.mint("alice-id"), user=fresh_user)
    assert (ok.returncode, ok.out) == (0, "in\n"), ok.err
    await _admin("chage", "-E", "1", fresh_user)
    expired = await client.ssh("echo in", token=issuer.mint("alice-id"), user=fresh_user)
    assert expired.returncode == 255
    assert "has expired" in expired.err


async def test_nologin_account_gets_no_shell_exec_or_sftp_but_may_forward(
    nologin_user: str,
    full_server: Sshd,
    client_for: Any,
    issuer: Issuer,
    tmp_path: Path,
) -> None:
    client = client_for(full_server)
    token = issuer.mint("alice-id")
    text = "This account is currently not available."
    shell = await client.ssh(token=token, user=nologin_user, input=b"echo ran\n")
    exec_ = await client.ssh("echo ran", token=token, user=nologin_user)
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    sftp = await client.tool(
        "sftp", "-b", str(batch), f"{nologin_user}@{full_server.host}", token=token
    )
    for result in (shell, exec_):
        assert result.returncode == 1, result.err
        assert text in result.err
        assert "ran" not in result.out
    assert sftp.returncode != 0
    assert full_server.metric("meshssh_sshd_session_refusals_total", reason="no_login_shell") == 3
    assert full_server.metric("meshssh_sshd_sftp_sessions_total", result="started") == 0
    # Forwarding only (ssh -N): allowed, as OpenSSH allows it for nologin accounts.
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        port = int(echo.sockets[0].getsockname()[1])
        forwarded = await client.ssh(
            "-W", f"127.0.0.1:{port}", token=token, user=nologin_user, input=b"hi"
        )
    finally:
        echo.close()
        await echo.wait_closed()
    assert forwarded.out == "hi", forwarded.err


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())
    await writer.drain()
    writer.close()


async def test_sftp_runs_as_the_user_through_the_users_shell(
    fresh_user: str, full_server: Sshd, client_for: Any, issuer: Issuer, tmp_path: Path
) -> None:
    source = tmp_path / "f.txt"
    source.write_text("owned\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {source} f.txt\n")
    client = client_for(full_server)
    result = await client.tool(
        "sftp", "-b", str(batch), f"{fresh_user}@{full_server.host}", token=issuer.mint("alice-id")
    )
    assert result.returncode == 0, result.err
    stored = Path(pwd.getpwnam(fresh_user).pw_dir) / "f.txt"
    assert stored.owner() == fresh_user
    # A shell that refuses -c (a restricted shell) also refuses SFTP, as with OpenSSH.
    await _admin("usermod", "-s", "/bin/false", fresh_user)
    again = await client.tool(
        "sftp", "-b", str(batch), f"{fresh_user}@{full_server.host}", token=issuer.mint("alice-id")
    )
    assert again.returncode != 0
