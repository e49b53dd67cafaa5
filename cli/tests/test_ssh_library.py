"""asyncssh imported without the liboqs lookup subprocesses, with the same algorithms."""

from __future__ import annotations

import json
import sys

from meshssh_cli.ssh.library import library_absent
from meshssh_testkit.process import run_command_sync

ALGS = (
    "import asyncssh.kex as k, asyncssh.public_key as p\n"
    "print(k.get_kex_algs(), p.get_public_key_algs())\n"
)
QUICK = "from meshssh_cli.ssh.library import import_asyncssh\nimport_asyncssh()\n"
# Every process the import starts shows up as a `subprocess.Popen` audit event.
WATCH = (
    "import sys, json\n"
    "seen = []\n"
    "sys.addaudithook(lambda e, a: seen.append(str(a[0])) if e == 'subprocess.Popen' else None)\n"
)


def python(code: str) -> str:
    return run_command_sync(sys.executable, "-c", code, check=True).out


def test_a_library_that_exists_is_never_called_absent_and_a_made_up_one_is() -> None:
    assert not library_absent("c")  # libc.so.6 is in the linker cache
    assert library_absent("meshssh-no-such-library")


def test_the_quick_import_offers_exactly_the_algorithms_of_a_plain_import() -> None:
    assert python(QUICK + ALGS) == python("import asyncssh\n" + ALGS)


def test_the_quick_import_skips_the_liboqs_lookup_processes() -> None:
    quick = json.loads(python(WATCH + QUICK + "print(json.dumps(seen))\n"))
    plain = json.loads(python(WATCH + "import asyncssh\nprint(json.dumps(seen))\n"))
    # What remains is the lookup of a library that exists (nettle, for UMAC): one ldconfig.
    assert len(quick) <= 1, quick
    assert len(plain) > len(quick), plain
