"""The environment and argv of a session process, as OpenSSH's sshd builds them (SPEC §7).

The server sets ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``PATH``, ``MAIL``,
``SSH_CLIENT``, ``SSH_CONNECTION``, and with a PTY ``TERM`` (``SSH_TTY`` is
added where the PTY is opened). Of what the client
sends, only the allow-list passes (``LANG``, ``LANGUAGE``, ``LC_*``, ``TERM``, ``COLORTERM``,
``TZ``, ``EDITOR``, ``VISUAL``, ``PAGER``, ``LESS``); it never overrides the server's own.

A shell without a command is a login shell (argv0 ``-bash``); a command runs as
``<shell> -c <command>`` with argv0 the shell's base name, like OpenSSH.

Example::

    env = session_env(account, origin, {"LANG": "C.UTF-8", "LD_PRELOAD": "x"}, term=None)
    executable, argv = shell_argv(account, "ls -l")
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from meshssh_sshd.accounts import Account
from meshssh_sshd.origin import Origin

__all__ = ["ALLOWED_ENV", "allowed_env", "session_env", "shell_argv"]

ALLOWED_ENV = frozenset(
    {"LANG", "LANGUAGE", "TERM", "COLORTERM", "TZ", "EDITOR", "VISUAL", "PAGER", "LESS"}
)
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
_MAX_VALUE = 4096


def allowed_env(requested: Mapping[str, str]) -> dict[str, str]:
    """The client's env requests that pass the allow-list (``LC_*`` included)."""
    out: dict[str, str] = {}
    for name, value in requested.items():
        if not (name in ALLOWED_ENV or (name.startswith("LC_") and name[3:].isalnum())):
            continue
        if len(value) > _MAX_VALUE or "\0" in value or "\0" in name:
            continue
        out[name] = value
    return out


def session_env(
    account: Account,
    conn: Origin,
    requested: Mapping[str, str],
    *,
    term: str | None,
) -> dict[str, str]:
    """The full environment of a session process for ``account``."""
    env = allowed_env(requested)
    env.pop("TERM", None)  # only meaningful with a PTY, where pty-req's value wins
    env.update(
        HOME=account.home,
        USER=account.name,
        LOGNAME=account.name,
        SHELL=account.shell,
        PATH=_ROOT_PATH if account.uid == 0 else _USER_PATH,
        MAIL=f"/var/mail/{account.name}",
        SSH_CLIENT=f"{conn.client_ip} {conn.client_port} {conn.server_port}",
        SSH_CONNECTION=(f"{conn.client_ip} {conn.client_port} {conn.server_ip} {conn.server_port}"),
    )
    if term is not None:
        env["TERM"] = term or "xterm-256color"
    return env


def shell_argv(account: Account, command: str | None) -> tuple[str, tuple[str, ...]]:
    """The executable and argv for a login shell (``command`` None) or a command."""
    shell = account.shell if os.path.isabs(account.shell) else "/bin/sh"
    base = os.path.basename(shell)
    if command is None:
        return shell, (f"-{base}",)
    return shell, (base, "-c", command)
