"""Whether the installed meshssh-sshd takes the flags the agent passes (issue 5's contract).

Until meshssh-sshd implements them (``--peer-id``, ``--listen``, ``--host-key``,
``--trusted-relay``, the feature flags), :func:`sshd_command` writes a small launcher that
drops the flags the installed skeleton does not know and execs the real meshssh-sshd, so the
process the agent supervises is still the real service. Once sshd takes the flags, the real
executable is used directly and the launcher is never written.

Example::

    agent = await AgentProcess.start(..., "--sshd-bin", sshd_command(tmp_path))
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

from meshssh_testkit.process import script

__all__ = ["sshd_command", "sshd_known_flags", "sshd_takes_the_contract"]

_CONTRACT = ("--peer-id", "--listen", "--host-key", "--trusted-relay")

_LAUNCHER = """#!{python}
# Interim launcher (meshssh_testkit.sshd_contract): the installed meshssh-sshd does not take
# every flag the agent passes yet; drop the unknown ones and exec the real service.
import os, sys
known = set({known!r})
args, argv, i = [], sys.argv[1:], 0
while i < len(argv):
    a = argv[i]
    takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
    if a in known:
        args.append(a)
        if takes_value:
            args.append(argv[i + 1])
    i += 2 if takes_value else 1
os.execv({real!r}, [{real!r}, *args])
"""


@functools.cache
def sshd_known_flags() -> frozenset[str]:
    """The flags ``meshssh-sshd --help`` lists."""
    out = subprocess.run(
        [script("meshssh-sshd"), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    return frozenset(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out))


def sshd_takes_the_contract() -> bool:
    """Whether meshssh-sshd takes every flag the agent passes it."""
    return all(flag in sshd_known_flags() for flag in _CONTRACT)


def sshd_command(directory: Path) -> str:
    """The executable an agent under test should run as sshd (see the module docstring)."""
    if sshd_takes_the_contract():
        return script("meshssh-sshd")
    path = directory / "meshssh-sshd-launcher"
    path.write_text(
        _LAUNCHER.format(
            python=sys.executable, known=sorted(sshd_known_flags()), real=script("meshssh-sshd")
        )
    )
    path.chmod(0o755)
    return str(path)
