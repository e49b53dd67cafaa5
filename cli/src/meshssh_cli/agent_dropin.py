"""The agent keeps the OpenSSH drop-in current: one write per applied map (SPEC §9).

:class:`DropinKeeper` is a map listener (:attr:`meshssh_cli.agent.Agent.map_listeners`): after
every map it writes the drop-in listing the map's remote peers with a pinned host key
(``config_cmd.sync_dropin``: validated names, atomic write, unchanged files left alone), and
removes it when the peer was removed or the user opted out (``--disable-ssh-config`` or
``MESHSSH_DISABLE_SSH_CONFIG=1``). The file is ``--ssh-config-file``, by default
``/etc/ssh/ssh_config.d/99-meshssh.conf`` as root and ``~/.ssh/meshssh.conf`` (included from
``~/.ssh/config``) otherwise. When the agent stops (``meshssh down``), :meth:`remove` takes
the file away again, so no stale ``ProxyCommand`` points at a socket nobody serves.

Example::

    keeper = DropinKeeper(executable="/usr/bin/meshssh")
    agent.map_listeners.append(keeper)
    ...
    await keeper.remove(agent.config)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshssh_cli import ssh_config
from meshssh_cli.agent_config import AgentConfig
from meshssh_cli.config_cmd import dropin_enabled, sync_dropin
from meshssh_cli.peer_directory import PeerEntry
from meshssh_common.wire import NetworkMap

__all__ = ["DropinKeeper", "dropin_path"]


def dropin_path(config: AgentConfig) -> Path:
    """The drop-in this agent keeps: ``--ssh-config-file`` or SPEC §9's default."""
    return config.ssh_config_file or ssh_config.default_path()


class DropinKeeper:
    """The map listener that writes the drop-in (writes run in order, off the event loop)."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.writes = 0
        self._lock = asyncio.Lock()  # FIFO: maps are written in the order they were applied

    async def __call__(self, netmap: NetworkMap | None, config: AgentConfig) -> None:
        """Write the drop-in for ``netmap`` (remove it for None or when opted out)."""
        enabled = netmap is not None and not config.disable_ssh_config and dropin_enabled()
        peers = [PeerEntry.from_remote(p) for p in netmap.remote_peers] if netmap else []
        async with self._lock:
            changed = await asyncio.to_thread(
                sync_dropin,
                peers,
                path=dropin_path(config),
                executable=self.executable,
                state_dir=config.state_dir,
                enabled=enabled,
            )
            self.writes += int(changed)

    async def remove(self, config: AgentConfig) -> bool:
        """Remove the drop-in (the agent is stopping); True when a file was removed."""
        if config.disable_ssh_config or not dropin_enabled():
            return False  # never written by this agent: leave whatever is there alone
        async with self._lock:
            return await asyncio.to_thread(ssh_config.uninstall, dropin_path(config))
