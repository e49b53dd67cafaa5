"""Marker files that answer the drop-in's "is this a MeshSSH server?" without starting Python.

OpenSSH runs the drop-in's ``Match ... exec`` for every connection to a mesh peer; when that
was ``meshssh ssh detect`` (a Python process: 0.1 s to 0.5 s) it cost as much as the
connection itself. So the agent keeps one empty file per server it knows to be MeshSSH,
``<state-dir>/ssh-servers/<port>/<host>``, and the Match line tries ``test -f`` on it first (a
shell builtin); a host without a marker still gets ``meshssh ssh detect`` (SPEC §9).

What the agent knows comes from its map (peers do not hear each other's heartbeats): a
remote peer with a pinned host key (the drop-in lists no other) whose entry says SSH is on
(``RemotePeer.ssh_enabled``: its operator's switch and its own ``--allow-server-ssh``, so its
sshd runs, and its relay with it) gets a marker for its SSH port and its relay port
(``ssh_port``/``relay_port``, which management copies from the peer's own report; 0, unknown,
makes none), under its name as the map spells it, that name in lower case, and its mesh
address (OpenSSH passes ``%h`` as the user typed it: other spellings fall back to
``meshssh ssh detect``). A relay without sshd leads to a native daemon: no marker. Markers go
when a map says otherwise, when the peer leaves the map, and when the agent stops. Host names
are validated as for the drop-in, so a name can never name another path. The map cannot say
whether the peer is up right now: a marker for a peer that is down costs little, as the proxy
then reports why it cannot connect.

The directory is 0755 and the files 0644: any local user's ``ssh`` may test them (the state
dir itself is 0711: reachable, not listable).

Example::

    marks = ServerMarks(marks_dir(state_dir))
    marks.sync(netmap)                 # after every map; writes only on change
    marks.clear()                      # the agent stops
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from meshssh_agent.ssh_config import is_valid_host
from meshssh_common.wire import NetworkMap

__all__ = ["MARKS_DIR", "ServerMarks", "marks_dir", "write_marks"]

MARKS_DIR = "ssh-servers"
Mark = tuple[int, str]  # (port, host)


def marks_dir(state_dir: Path) -> Path:
    """The marker directory of an agent's state dir."""
    return state_dir / MARKS_DIR


def write_marks(directory: Path, marks: Iterable[Mark]) -> None:
    """Make ``directory`` hold exactly the markers ``marks`` (invalid host names skipped).

    New markers are created before stale ones are removed.
    """
    wanted = {(port, host) for port, host in marks if 0 < port < 65536 and is_valid_host(host)}
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    for port, host in wanted:
        sub = directory / str(port)
        sub.mkdir(mode=0o755, exist_ok=True)
        if not (sub / host).exists():
            os.close(os.open(sub / host, os.O_WRONLY | os.O_CREAT, 0o644))
    for sub in directory.iterdir():
        port = int(sub.name) if sub.name.isdigit() else -1
        for entry in list(sub.iterdir()) if sub.is_dir() else [sub]:
            if (port, entry.name) not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        with contextlib.suppress(OSError):
            sub.rmdir()  # only when empty


class ServerMarks:
    """The markers one agent keeps (see the module docstring).

    Args:
        directory: ``<state-dir>/ssh-servers``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._written: frozenset[Mark] | None = None

    @staticmethod
    def wanted(netmap: NetworkMap | None) -> frozenset[Mark]:
        """The markers the map calls for."""
        if netmap is None:
            return frozenset()
        marks: set[Mark] = set()
        for peer in netmap.remote_peers:
            if not peer.ssh_enabled or not peer.ssh_host_key.strip():
                continue
            hosts = (peer.name, peer.name.lower(), peer.mesh_ip)
            ports = (peer.ssh_port, peer.relay_port)
            marks |= {(port, host) for port in ports if port for host in hosts}
        return frozenset(marks)

    def sync(self, netmap: NetworkMap | None) -> bool:
        """Write the markers for ``netmap`` when they changed; True when it wrote."""
        marks = self.wanted(netmap)
        if marks == self._written:
            return False
        write_marks(self.directory, marks)
        self._written = marks
        return True

    def clear(self) -> None:
        """Remove every marker (and the directory): the agent stops or keeps no drop-in."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self._written = frozenset() if not self.directory.exists() else None
