"""Secret files written mode 0600 from the first byte, atomically.

A secret is never written to its final name directly, and never chmod-ed after the fact: it
goes to a fresh temp file created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (the
umask can only narrow it) in the target's directory, is fsynced, then renamed over the
target, and the directory is fsynced. A missing directory is created 0700. Readers therefore
see the old file or the whole new one, and nobody else ever sees either.

Example::

    write_secret_file(state_dir / "nats.creds", creds_bytes)
    write_secret_file(run / "admin-token", token)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["SECRET_MODE", "write_secret_file"]

SECRET_MODE = 0o600


def write_secret_file(path: Path, data: bytes | str, *, mode: int = SECRET_MODE) -> None:
    """Write ``data`` to ``path`` with ``mode`` (0600 unless narrower) from creation on.

    Raises:
        OSError: the directory cannot be created or written, or the rename failed (the temp
            file is removed).
    """
    if mode & 0o077:
        raise ValueError(f"a secret file must not be readable by others (mode {mode:o})")
    body = data.encode() if isinstance(data, str) else data
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (best effort)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
