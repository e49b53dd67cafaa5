"""Throwaway local accounts for tests that log in as, or switch to, another user (root only).

Each account gets a fresh random name (``msh`` + 8 hex digits), so parallel test processes
never share one. ``useradd`` and ``userdel`` rewrite /etc/passwd and /etc/shadow under a lock
that fails at once when another process holds it, so every change here first takes an
exclusive ``flock`` on one file all test processes share. Removal first stops what still runs
as the user (an OpenSSH session's ``sleep`` can outlive its connection for a moment, and
``userdel`` refuses a user with processes).

Example::

    with throwaway_user() as name:
        ...  # log in as ``name``
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from meshssh_testkit.process import run_command_sync

__all__ = ["add_user", "remove_user", "throwaway_user"]

_LOCK = Path("/run/lock/meshssh-tests-useradd.lock")


@contextlib.contextmanager
def _accounts_lock(timeout: float = 60.0) -> Iterator[None]:
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{_LOCK} held for more than {timeout}s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _uid_of(proc_dir: Path) -> int:
    try:
        return proc_dir.stat().st_uid
    except OSError:
        return -1


def remove_user(name: str, uid: int, timeout: float = 10.0) -> None:
    """Stop every process of ``uid`` (bounded), then ``userdel -r name``."""
    deadline = time.monotonic() + timeout
    while uid > 0 and time.monotonic() < deadline:
        left = [int(d.name) for d in Path("/proc").glob("[0-9]*") if _uid_of(d) == uid]
        if not left:
            break
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    with _accounts_lock():
        result = run_command_sync("userdel", "-r", name, timeout=30)
    result.check(0, 12)  # 12: the mail spool was missing; the account and home are gone


def add_user(name: str, shell: str = "/bin/bash", password: str | None = "*") -> int:
    """``useradd -m name``; returns the new uid.

    ``password``: the ``useradd -p`` field (``"*"``, the default: no password, not locked;
    None: useradd's own ``!``, a locked account, which sshd refuses as OpenSSH does).
    """
    import pwd

    argv = ["useradd", "-m", "-s", shell, *(["-p", password] if password is not None else [])]
    with _accounts_lock():
        run_command_sync(*argv, name, timeout=30, check=True)
    return pwd.getpwnam(name).pw_uid


@contextlib.contextmanager
def throwaway_user(shell: str = "/bin/bash", password: str | None = "*") -> Iterator[str]:
    """A new account (see :func:`add_user`) with a random name, removed on exit."""
    name = f"msh{uuid.uuid4().hex[:8]}"
    uid = add_user(name, shell, password)
    try:
        yield name
    finally:
        remove_user(name, uid)
