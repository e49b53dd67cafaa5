"""Local accounts: which OS user a session runs as (SPEC §7, user switching).

Users are resolved through NSS (``pwd``/``grp``, so LDAP and SSSD users work) and never through
``/usr/bin/login`` or ``su``. When the server runs as root, a session for local user U runs
as U: its uid, primary gid, supplementary groups, home and shell. When it does not run as
root it cannot switch: every session runs as the service account, and this is logged once
per login. ``root`` (any uid 0 account) is refused unless ``--enable-ssh-root``. Names are
validated first: POSIX portable characters, at most 32, no leading ``-``.

As OpenSSH does, a locked or expired account (:mod:`meshssh_sshd.shadow`) is refused at
authentication, so it gets no session of any kind (shell, exec, SFTP, forwarding); an account
whose shell is ``nologin`` or ``false`` authenticates (forwarding works, as with OpenSSH) but
its shell, exec and SFTP sessions get OpenSSH's "This account is currently not available."

Example::

    accounts = Accounts(allow_root=False, log=log)
    account = accounts.resolve("alice")      # raises Refused with a user-facing text
    account.switch                           # True when the server must change uid
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass

from meshssh_common.logs import BoundLogger
from meshssh_sshd.refusal import Refused
from meshssh_sshd.shadow import account_status, read_shadow, today

__all__ = ["NOT_AVAILABLE", "Account", "Accounts", "validate_user_name"]

NOT_AVAILABLE = "This account is currently not available."
_NO_LOGIN_SHELLS = frozenset({"nologin", "false"})
_STATUS_PUBLIC = {
    "locked": "Permission denied: the local account {user} is locked on this peer; "
    "ask its admin to unlock it",
    "expired": "Permission denied: the local account {user} has expired on this peer; "
    "ask its admin to extend it",
    "inactive": "Permission denied: the password of the local account {user} expired long "
    "ago and the account is now inactive on this peer; ask its admin",
}

_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")
_ROOT_PUBLIC = (
    "Permission denied: login as root is disabled on this peer; "
    "start the peer with --enable-ssh-root to allow it"
)


@dataclass(frozen=True, slots=True)
class Account:
    """A resolved local account; ``switch`` says whether sessions must change to its uid."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str
    switch: bool
    requested: str = ""  # the name the client asked for, when it differs (no switching)

    @property
    def no_login(self) -> bool:
        """The shell is ``nologin`` or ``false``: no shell, exec or SFTP (forwarding only)."""
        return os.path.basename(self.shell) in _NO_LOGIN_SHELLS


def validate_user_name(name: str) -> None:
    """Refuse a user name that is not POSIX portable, longer than 32, or starts with ``-``.

    Raises:
        Refused: label ``bad_user``.
    """
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise Refused(
            "bad_user",
            f"invalid local user name {name[:40]!r}",
            public="Permission denied: invalid user name (letters, digits, '.', '_', '-'; "
            "at most 32; no leading '-')",
        )


def _from_passwd(pw: pwd.struct_passwd, *, switch: bool, requested: str = "") -> Account:
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        groups = (pw.pw_gid,)
    return Account(
        name=pw.pw_name,
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        groups=groups,
        home=pw.pw_dir or "/",
        shell=pw.pw_shell or "/bin/sh",
        switch=switch,
        requested=requested,
    )


class Accounts:
    """Resolves requested user names into the account a session runs as."""

    def __init__(self, *, allow_root: bool, log: BoundLogger, accept_locked: bool = False) -> None:
        self.allow_root = allow_root
        self.accept_locked = accept_locked
        self.switching = os.geteuid() == 0
        self._log = log
        if not self.switching:
            log.warning(
                "not running as root: every session runs as the service account",
                extra={"uid": os.geteuid()},
            )

    def resolve(self, requested: str) -> Account:
        """The account a login as ``requested`` runs as (blocking: NSS may do network I/O).

        Raises:
            Refused: invalid name (``bad_user``), root refused (``root_disabled``), no such
                user (``unknown_user``), or a locked or expired account (``account_locked``,
                ``account_expired``, ``account_inactive``); ``public`` says what to check next.
        """
        validate_user_name(requested)
        if requested == "root" and not self.allow_root:
            raise Refused("root_disabled", "login as root refused", public=_ROOT_PUBLIC)
        if not self.switching:
            pw = pwd.getpwuid(os.geteuid())
            if pw.pw_name != requested:
                self._log.info(
                    "not root: session runs as the service account, not the requested user",
                    extra={"requested": requested, "runs_as": pw.pw_name},
                )
            return _from_passwd(pw, switch=False, requested=requested)
        try:
            pw = pwd.getpwnam(requested)
        except KeyError:
            raise Refused(
                "unknown_user",
                f"no local user {requested!r}",
                public=f"Permission denied: there is no local user {requested} on this peer",
            ) from None
        if pw.pw_uid == 0 and not self.allow_root:
            raise Refused("root_disabled", f"{requested!r} has uid 0", public=_ROOT_PUBLIC)
        status = account_status(read_shadow(pw.pw_name), today())
        if status == "locked" and self.accept_locked:
            status = ""
        if status:
            raise Refused(
                f"account_{status}",
                f"local account {requested!r} is {status}",
                public=_STATUS_PUBLIC[status].format(user=requested),
            )
        return _from_passwd(pw, switch=pw.pw_uid != os.geteuid())
