"""The agent keeps the OpenSSH drop-in current: one write per applied map (SPEC §9).

:class:`DropinKeeper` is a map listener (:attr:`meshssh_agent.agent.Agent.map_listeners`): after
every map it writes the drop-in listing the map's remote peers with a pinned host key
(:func:`sync_dropin`: validated names, atomic write, unchanged files left alone), and
removes it when the peer was removed or the user opted out (``--disable-ssh-config`` or
``MESHSSH_DISABLE_SSH_CONFIG=1``). The file is ``--ssh-config-file``, by default
``/etc/ssh/ssh_config.d/99-meshssh.conf`` as root and ``~/.ssh/meshssh.conf`` (included from
``~/.ssh/config``) otherwise. When the agent stops (``meshssh down``), :meth:`remove` takes
the file away again, so no stale ``ProxyCommand`` points at a socket nobody serves.

It also keeps the drop-in's server markers (:mod:`meshssh_agent.server_marks`, in
``<state-dir>/ssh-servers``) in line with each map (which remote peers run SSH, on which
ports). With the drop-in disabled there are no markers either; :meth:`remove` removes them
too.

Example::

    keeper = DropinKeeper(executable="/usr/bin/meshssh", state_dir=state)
    agent.map_listeners.append(keeper)
    ...
    await keeper.remove(agent.settings)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from meshssh_agent import ssh_config
from meshssh_agent.peers import PeerEntry
from meshssh_agent.server_marks import ServerMarks, marks_dir
from meshssh_agent.settings import AgentSettings
from meshssh_common.wire import NetworkMap

__all__ = [
    "OPT_OUT_ENV",
    "DropinKeeper",
    "dropin_enabled",
    "dropin_path",
    "meshssh_executable",
    "sync_dropin",
]


def dropin_path(config: AgentSettings) -> Path:
    """The drop-in this agent keeps: ``--ssh-config-file`` or SPEC §9's default."""
    return config.ssh_config_file or ssh_config.default_path()


def _enabled(config: AgentSettings) -> bool:
    return not config.disable_ssh_config and dropin_enabled()


OPT_OUT_ENV = "MESHSSH_DISABLE_SSH_CONFIG"


def dropin_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when the user opted out with ``MESHSSH_DISABLE_SSH_CONFIG`` (1/true/yes/on)."""
    return env.get(OPT_OUT_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def meshssh_executable() -> str:
    """The absolute path of this ``meshssh`` program, for the drop-in's commands.

    Raises:
        FileNotFoundError: neither the running program nor ``meshssh`` on PATH can be found.
    """
    argv0 = Path(sys.argv[0])
    if argv0.name == "meshssh" and argv0.is_file():
        return str(argv0.resolve())
    sibling = Path(sys.executable).parent / "meshssh"  # e.g. the agent runs as python -m
    if sibling.is_file():
        return str(sibling.absolute())
    found = shutil.which("meshssh")
    if found is None:
        raise FileNotFoundError("meshssh is not on PATH")
    return str(Path(found).resolve())


def sync_dropin(
    peers: Iterable[PeerEntry],
    *,
    path: Path,
    executable: str,
    state_dir: Path | None = None,
    enabled: bool = True,
    home: Path | None = None,
    marks: Path | None = None,
) -> bool:
    """Make the drop-in at ``path`` list ``peers`` (or remove it when not ``enabled``).

    ``marks`` is the agent's marker directory, tested before ``meshssh ssh detect`` runs
    (:mod:`meshssh_agent.server_marks`).

    Returns:
        True when the file changed (written or removed).
    """
    if not enabled:
        return ssh_config.uninstall(path, home=home)
    hosts = [h for p in peers if p.host_key_line.strip() for h in p.hosts()]
    text = ssh_config.render(hosts, ssh_config.DropIn(executable, state_dir, marks))
    if path.is_file() and path.read_text() == text:
        return False
    ssh_config.install(text, path, home=home)
    return True


class DropinKeeper:
    """The map listener that writes the drop-in (writes run in order, off the event loop)."""

    def __init__(
        self,
        executable: str,
        *,
        state_dir: Path,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self.executable = executable
        self.writes = 0
        self._on_write = on_write
        self.marks = ServerMarks(marks_dir(state_dir))
        self._lock = asyncio.Lock()  # FIFO: maps are written in the order they were applied

    async def __call__(self, netmap: NetworkMap | None, config: AgentSettings) -> None:
        """Write the drop-in for ``netmap`` (remove it for None or when opted out)."""
        enabled = netmap is not None and _enabled(config)
        peers = [PeerEntry.from_remote(p) for p in netmap.remote_peers] if netmap else []
        self.refresh(netmap, config)
        async with self._lock:
            changed = await asyncio.to_thread(
                sync_dropin,
                peers,
                path=dropin_path(config),
                executable=self.executable,
                state_dir=config.state_dir,
                enabled=enabled,
                marks=self.marks.directory,
            )
            self.writes += int(changed)
            if changed and self._on_write is not None:
                self._on_write()

    def refresh(self, netmap: NetworkMap | None, config: AgentSettings) -> None:
        """Bring the markers in line with ``netmap``.

        A few small files at most, and only when something changed: done in place.
        """
        try:
            if _enabled(config):
                self.marks.sync(netmap)
            else:
                self.marks.clear()
        except OSError:
            self.marks.clear()  # no marker is always safe: detect runs instead

    async def remove(self, config: AgentSettings) -> bool:
        """Remove the drop-in (the agent is stopping); True when a file was removed."""
        self.marks.clear()
        if config.disable_ssh_config or not dropin_enabled():
            return False  # never written by this agent: leave whatever is there alone
        async with self._lock:
            return await asyncio.to_thread(ssh_config.uninstall, dropin_path(config))
