"""asyncssh, imported without the subprocesses its post-quantum shim starts to look for liboqs.

``asyncssh.crypto.pq`` calls ``ctypes.util.find_library("oqs")`` and ``("liboqs")`` when it is
imported. On Linux each call runs ``/sbin/ldconfig -p``, then ``gcc``, then ``ld`` as
subprocesses whenever the library is absent (the usual case), which cost 40 ms to 90 ms of
every ``meshssh ssh`` and every ``meshssh ssh proxy`` start (OpenSSH starts one per
connection through the drop-in). :func:`import_asyncssh` imports asyncssh while those two
lookups first check, without a subprocess, whether a ``lib<name>.so`` could exist at all: in
the dynamic linker's cache (``/etc/ld.so.cache``), in ``LD_LIBRARY_PATH`` and in the usual
library directories. Only when none can is the answer "not found" given at once; whenever a
candidate exists the real ``find_library`` answers, so asyncssh ends up with the same
algorithms (sntrup761 included when liboqs is installed). Other lookups are untouched, and
``find_library`` is restored after the import.

Example::

    asyncssh = import_asyncssh()   # then `import asyncssh` anywhere is free
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["import_asyncssh", "library_absent"]

_LOOKED_UP = frozenset({"oqs", "liboqs"})  # what asyncssh.crypto.pq asks for (asyncssh 2.24)
_LINKER_CACHE = Path("/etc/ld.so.cache")


def _library_dirs() -> list[str]:
    machine = os.uname().machine
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for base in ("/usr/local/lib", "/usr/lib", "/lib"):
        dirs += [base, f"{base}64", f"{base}/{machine}-linux-gnu"]
    return dirs


def library_absent(name: str) -> bool:
    """True when no ``lib<name>.so*`` can exist for ``find_library`` to find (no subprocess).

    False means "maybe": the cache cannot be read, or a candidate file or cache entry exists.
    """
    prefix = f"lib{name}.so"
    try:
        if prefix.encode() in _LINKER_CACHE.read_bytes():
            return False
    except OSError:
        return False
    for directory in _library_dirs():
        try:
            with os.scandir(directory) as entries:
                if any(e.name.startswith(prefix) for e in entries):
                    return False
        except OSError:
            continue
    return True


@contextlib.contextmanager
def _quick_lookups() -> Iterator[None]:
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        if name in _LOOKED_UP and library_absent(name):
            return None
        return original(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = original


def import_asyncssh() -> ModuleType:
    """Import asyncssh (once per process) with the quick liboqs lookups; returns the module."""
    if "asyncssh" not in sys.modules:
        with _quick_lookups():
            import asyncssh  # noqa: F401
    return sys.modules["asyncssh"]
