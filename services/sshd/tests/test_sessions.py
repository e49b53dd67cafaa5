"""Sessions as OpenSSH users know them: exit codes, PTYs, non-PTY shells, env, signals,
user switching without ``login``, and process-group cleanup when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import signal
import struct
import termios
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="user switching needs root")


def _login(server: Sshd, issuer: Issuer, user: str) -> Any:
    """An asyncssh connection as alice (a second client implementation beside OpenSSH)."""
    return asyncssh.connect(
        server.host,
        server.port,
        username=user,
        password=issuer.mint("alice-id"),
        known_hosts=None,
        preferred_auth="password",
        local_addr=("127.0.0.3", 0),
    )


@pytest.fixture
async def server(mesh: Mesh, sshd_factory: SshdFactory, local_user: str) -> Sshd:
    await mesh.publish_map(grants=[("alice-id", "*")])
    return await sshd_factory.start()


async def test_exit_status_of_a_command_reaches_the_client_and_the_session_is_audited(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str, mesh: Mesh
) -> None:
    client = client_for(server)
    result = await client.ssh(
        "echo out; echo err >&2; exit 7", token=issuer.mint("alice-id"), user=local_user
    )
    assert result.returncode == 7, result.err
    assert result.out == "out\n"
    assert "err\n" in result.err
    start = await mesh.wait_audit(lambda e: e.kind == "session-start")
    end = await mesh.wait_audit(lambda e: e.kind == "session-end")
    assert (start.local_user, start.jwt_user, start.command) == (local_user, "alice-id", "echo +6")
    assert start.source_addr.startswith("127.0.0.3:")
    assert (end.session_id, end.result, end.bytes_out) == (start.session_id, "7", 8)
    assert end.duration > 0


async def test_stdin_reaches_the_command_and_large_output_arrives_intact(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    client = client_for(server)
    data = os.urandom(3 * 1024 * 1024)
    result = await client.ssh("cat", token=issuer.mint("alice-id"), user=local_user, input=data)
    assert result.returncode == 0, result.err
    assert len(result.stdout) == len(data)
    assert result.stdout == data


async def test_ssh_T_runs_a_non_pty_login_shell(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    client = client_for(server)
    script = b"echo shell=$0; tty; exit 3\n"
    result = await client.ssh("-T", token=issuer.mint("alice-id"), user=local_user, input=script)
    assert result.returncode == 3, result.err
    shell = os.path.basename(pwd.getpwnam(local_user).pw_shell)
    assert f"shell=-{shell}" in result.out
    assert "not a tty" in result.out


async def test_only_allow_listed_env_reaches_the_session(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    client = client_for(server)
    opts = ["-o", "SetEnv=LANG=C.UTF-8 LC_TIME=C EDITOR=vi LD_PRELOAD=/x EVIL=1 PATH=/evil"]
    result = await client.ssh(
        "echo $LANG/$LC_TIME/$EDITOR/${LD_PRELOAD-unset}/${EVIL-unset}/$PATH",
        token=issuer.mint("alice-id"),
        user=local_user,
        opts=opts,
    )
    assert result.returncode == 0, result.err
    lang, lc_time, editor, preload, evil, path = result.out.strip().split("/", 5)
    assert (lang, lc_time, editor, preload, evil) == ("C.UTF-8", "C", "vi", "unset", "unset")
    assert "/evil" not in path


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while needle not in seen:
            ready = asyncio.Event()
            loop.add_reader(fd, ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(fd)
            with contextlib.suppress(BlockingIOError):
                seen += os.read(fd, 65536)


async def test_ssh_tt_gets_a_pty_of_the_requested_size_and_resizes_reach_the_program(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    client = client_for(server)
    master, slave = os.openpty()
    os.set_blocking(master, False)
    _set_size(slave, 30, 100)
    program = (
        "tty; echo TERM=$TERM; stty size; trap 'stty size' WINCH; echo ready; "
        "while :; do sleep 0.1; done"
    )
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("-tt", program, user=local_user),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **client.env(issuer.mint("alice-id")), "TERM": "xterm-256color"},
    )
    os.close(slave)
    seen = bytearray()
    try:
        await _read_until(master, b"ready", seen)
        assert b"/dev/pts/" in seen
        assert b"TERM=xterm-256color" in seen
        assert b"30 100" in seen
        _set_size(master, 41, 123)
        proc.send_signal(signal.SIGWINCH)
        await _read_until(master, b"41 123", seen)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        os.close(master)


async def test_a_signal_request_reaches_the_command(
    server: Sshd, issuer: Issuer, local_user: str
) -> None:
    # OpenSSH's client cannot send signals: use asyncssh's client, a second implementation.
    async with _login(server, issuer, local_user) as conn:
        proc = await conn.create_process("echo started; exec sleep 30")
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)) == "started\n"
        proc.send_signal("TERM")
        completed = await asyncio.wait_for(proc.wait(check=False), 10)
    assert completed.exit_signal is not None
    assert completed.exit_signal[0] == "TERM"


async def test_a_dropped_client_gets_its_process_group_killed(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    client = client_for(server)
    program = "sleep 300 & echo pid=$!; trap '' TERM; sleep 301"  # the leader ignores TERM
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("-T", program, user=local_user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **client.env(issuer.mint("alice-id"))},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    child = int(line.decode().strip().removeprefix("pid="))
    assert not _gone(child)
    proc.kill()  # the client vanishes without closing the session
    await proc.wait()
    async with asyncio.timeout(10):
        while not _gone(child):
            await asyncio.sleep(0.05)


def _gone(pid: int) -> bool:
    """The process exited (a zombie counts: it no longer runs)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


@ROOT_ONLY
async def test_sessions_run_as_the_target_user_with_groups_home_shell_and_no_login_binary(
    server: Sshd, client_for: Any, issuer: Issuer, local_user: str, tmp_path: Any
) -> None:
    client = client_for(server)
    pw = pwd.getpwnam(local_user)
    program = (
        "id -u; id -g; id -G; echo $HOME; echo $SHELL; echo $USER $LOGNAME; pwd; "
        "echo $PATH; cat /proc/$PPID/comm; touch owned-file; stat -c %U owned-file"
    )
    result = await client.ssh(program, token=issuer.mint("alice-id"), user=local_user)
    assert result.returncode == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == str(pw.pw_uid)
    assert lines[1] == str(pw.pw_gid)
    assert set(map(int, lines[2].split())) == set(os.getgrouplist(local_user, pw.pw_gid))
    assert lines[3] == pw.pw_dir
    assert lines[4] == pw.pw_shell
    assert lines[5] == f"{local_user} {local_user}"
    assert lines[6] == pw.pw_dir
    assert "/usr/bin" in lines[7]
    # The shell's parent is the server itself: no login or su in between.
    assert lines[8] not in ("login", "su")
    assert lines[9] == local_user


@ROOT_ONLY
async def test_a_pty_login_shell_has_a_controlling_terminal_owned_by_the_user(
    server: Sshd, issuer: Issuer, local_user: str
) -> None:
    async with _login(server, issuer, local_user) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        proc.stdin.write("echo zero=$0; stat -c %U $(tty); ps -o tty= -p $$; exit 5\n")
        completed = await asyncio.wait_for(proc.wait(check=False), 15)
    out = str(completed.stdout)
    shell = os.path.basename(pwd.getpwnam(local_user).pw_shell)
    assert f"zero=-{shell}" in out
    assert f"\n{local_user}" in out.replace("\r", "")
    assert "pts/" in out
    assert completed.exit_status == 5


async def test_terminal_modes_from_the_pty_request_are_applied(
    server: Sshd, issuer: Issuer, local_user: str
) -> None:
    async with _login(server, issuer, local_user) as conn:
        # VERASE = ^H (3: 8), ECHO off (53: 0), as a client whose terminal is set so would send.
        result = await conn.run(
            "stty -a", term_type="vt100", term_size=(100, 30), term_modes={3: 8, 53: 0}, check=False
        )
    out = str(result.stdout)
    assert "erase = ^H" in out
    assert "-echo " in out
    assert "rows 30; columns 100" in out


async def test_pty_output_waiting_for_a_stalled_client_after_the_exit_is_all_delivered(
    server: Sshd, issuer: Issuer, local_user: str
) -> None:
    # Each program exits at once, the tail of its output still in the terminal because the
    # client's small window stopped sshd from reading it (32 KiB window + 64 KiB channel
    # buffer + ~16 KiB terminal: the sizes straddle where the program can just exit). The
    # client reads only 2.5 s later, past the 1 s drain after an exit. Nothing may be lost.
    async def stalled(conn: asyncssh.SSHClientConnection, size: int) -> tuple[int, bytes, int]:
        proc = await conn.create_process(
            f"head -c {size} /dev/zero | tr '\\0' a",
            term_type="xterm",
            term_size=(80, 24),
            encoding=None,
            window=32 * 1024,
        )
        await asyncio.sleep(2.5)
        got = bytearray()
        while chunk := await proc.stdout.read(1 << 16):
            got += chunk
        completed = await proc.wait(check=False)
        return size, bytes(got), completed.exit_status

    async with _login(server, issuer, local_user) as conn:
        async with asyncio.timeout(20):
            results = await asyncio.gather(*(stalled(conn, k * 1024) for k in range(96, 148, 4)))
    for size, got, status in results:
        assert (len(got), status) == (size, 0)
        assert got == b"a" * size


async def test_a_pty_session_ends_after_its_program_though_a_background_job_holds_the_terminal(
    server: Sshd, issuer: Issuer, local_user: str
) -> None:
    # The job keeps the terminal open, so its hang-up never comes: the session ends once the
    # terminal has been quiet for the drain time after the program's exit.
    async with _login(server, issuer, local_user) as conn:
        started = asyncio.get_running_loop().time()
        result = await asyncio.wait_for(
            conn.run("sleep 30 & echo started; exit 3", term_type="xterm", check=False), 15
        )
        elapsed = asyncio.get_running_loop().time() - started
    assert "started" in str(result.stdout)
    assert result.exit_status == 3
    assert elapsed < 10
