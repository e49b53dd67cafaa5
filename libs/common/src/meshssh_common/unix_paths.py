"""Unix socket paths longer than ``sun_path`` allows (107 bytes on Linux).

A state dir can sit deep in a file system (tests, ``make run``, ``--state-dir`` anywhere), so
its sockets may have paths too long to bind or connect to. :func:`reachable` yields a name
that works: the path itself when it is short, else ``/proc/self/fd/<dir fd>/<name>`` through a
descriptor of its directory, held open while the block runs.

Example::

    with reachable(state_dir / "sshd" / "relay.sock") as name:
        sock.bind(name)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["reachable"]

_SHORT = 100  # bytes: below sun_path's 107 with room to spare


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name a Unix socket at ``path`` can be bound or reached at while the block runs.

    Raises:
        OSError: ``path``'s directory cannot be opened (only for a long path).
    """
    text = str(path)
    if len(text.encode()) < _SHORT:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
