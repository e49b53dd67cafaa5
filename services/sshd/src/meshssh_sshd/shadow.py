"""Shadow entries and OpenSSH's account-status rules (locked, expired) for local accounts.

The entry is read through NSS (``getspnam_r`` in libc, so ``/etc/shadow``, LDAP and SSSD all
answer), which needs root; when it cannot be read (not root, no shadow entry) the status is
unknown and nothing is refused on its account, as OpenSSH does.

The rules are those of OpenSSH's sshd on Linux without PAM (``auth.c`` ``allowed_user`` and
``auth-shadow.c``):

- **locked**: the password field starts with ``!`` (``usermod -L``, and ``useradd`` without a
  password) or contains ``*LK*``. A field of ``*`` (no password, not locked) is not locked:
  that is how an account that only logs in with a token should be set (``usermod -p '*'``).
- **expired**: the account expiry day (``chage -E``) is before today (days since the epoch,
  UTC), or the password aged past its inactivity period (``lastchg + max + inact < today``,
  with all three set), which is when PAM's ``pam_unix`` calls the account expired. A password
  that merely needs changing does not refuse a token login: no password is used.

Example::

    entry = read_shadow("alice")             # None when unknown
    status = account_status(entry, today())  # "" | "expired" | "inactive" | "locked"
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import time
from dataclasses import dataclass

__all__ = ["ShadowEntry", "account_status", "read_shadow", "today"]

_DAY = 86400


class _Spwd(ctypes.Structure):
    _fields_ = [
        ("sp_namp", ctypes.c_char_p),
        ("sp_pwdp", ctypes.c_char_p),
        ("sp_lstchg", ctypes.c_long),
        ("sp_min", ctypes.c_long),
        ("sp_max", ctypes.c_long),
        ("sp_warn", ctypes.c_long),
        ("sp_inact", ctypes.c_long),
        ("sp_expire", ctypes.c_long),
        ("sp_flag", ctypes.c_ulong),
    ]


@dataclass(frozen=True, slots=True)
class ShadowEntry:
    """The fields of one shadow entry the rules need (-1: field empty)."""

    password: str
    last_change: int
    max_days: int
    inactive: int
    expire: int


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    fn = libc.getspnam_r
    fn.argtypes = [
        ctypes.c_char_p,
        ctypes.POINTER(_Spwd),
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.POINTER(_Spwd)),
    ]
    fn.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def read_shadow(name: str) -> ShadowEntry | None:
    """The shadow entry of ``name``; None when there is none or it cannot be read (not root).

    Blocking (NSS may do network I/O): call it from a thread.
    """
    if _LIBC is None:
        return None
    size = 4096
    while size <= 1 << 20:
        spwd = _Spwd()
        buf = ctypes.create_string_buffer(size)
        result = ctypes.POINTER(_Spwd)()
        rc = _LIBC.getspnam_r(name.encode(), ctypes.byref(spwd), buf, size, ctypes.byref(result))
        if rc == errno.ERANGE:
            size *= 4
            continue
        if rc != 0 or not result:
            return None
        return ShadowEntry(
            password=(spwd.sp_pwdp or b"").decode("utf-8", "replace"),
            last_change=int(spwd.sp_lstchg),
            max_days=int(spwd.sp_max),
            inactive=int(spwd.sp_inact),
            expire=int(spwd.sp_expire),
        )
    return None


def today(now: float | None = None) -> int:
    """Days since the epoch (UTC), the unit of shadow dates."""
    return int((time.time() if now is None else now) // _DAY)


def account_status(entry: ShadowEntry | None, day: int) -> str:
    """``""`` (usable), ``locked``, ``expired`` (account expiry) or ``inactive`` (see above)."""
    if entry is None:
        return ""
    if entry.expire >= 0 and entry.expire < day:
        return "expired"
    if (
        entry.last_change > 0
        and entry.max_days >= 0
        and entry.inactive >= 0
        and entry.last_change + entry.max_days + entry.inactive < day
    ):
        return "inactive"
    if entry.password.startswith("!") or "*LK*" in entry.password:
        return "locked"  # last: an account both locked and expired reports the expiry
    return ""
