"""Salted scrypt password hashes for the embedded provider's users file.

The stored form is self-describing, so the cost can be raised later without breaking
existing entries: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``.

Example::

    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["hash_password", "verify_password"]

_LOG2_N = 15  # 32 MiB of memory and ~50 ms per check on this machine kind
_R = 8
_P = 1
_DKLEN = 32
_MAXMEM = 256 * 1024 * 1024
_SCHEME = "scrypt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN
    )


def hash_password(password: str, *, log2_n: int = _LOG2_N) -> str:
    """Hash ``password`` with a fresh 16-byte salt.

    Args:
        password: the clear-text password (never stored).
        log2_n: scrypt cost as a power of two; tests may lower it.

    Returns:
        The self-describing stored form.

    Raises:
        ValueError: the password is empty.
    """
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, log2_n, _R, _P)
    return f"{_SCHEME}${log2_n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a stored hash in constant time.

    A malformed stored value never matches (fail closed) and never raises.
    """
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        actual = _derive(password, salt, log2_n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
