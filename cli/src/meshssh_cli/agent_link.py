"""Where ``meshssh ssh`` finds the local peer agent: the Unix socket in ``--state-dir``.

The agent (``meshssh up``) serves the caller's cached JWT (per OS user, one shared device
flow) and the current map's peers over this socket; :func:`open_agent` is the
:class:`~meshssh_cli.peer_directory.LinkOpener` the CLI uses. The agent and its socket
protocol are built separately (issue 6, with the token cache of issue 4); until they are
merged, this module locates the socket and reports clearly that it cannot be queried.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshssh_cli.client_errors import LinkError
from meshssh_cli.peer_directory import ClientLink

__all__ = ["SOCKET_NAME", "agent_socket", "default_state_dir", "open_agent"]

SOCKET_NAME = "agent.sock"


def default_state_dir() -> Path:
    """The state dir when ``--state-dir`` is not given (root: system-wide; else per user)."""
    if os.geteuid() == 0:
        return Path("/var/lib/meshssh")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshssh"


def agent_socket(state_dir: Path | None) -> Path:
    """The agent's socket for ``state_dir``."""
    return (state_dir or default_state_dir()) / SOCKET_NAME


async def open_agent(state_dir: Path | None) -> ClientLink:
    """Connect to the agent serving ``state_dir``.

    Raises:
        LinkError: no agent socket there, or the agent cannot be queried by this build.
    """
    path = agent_socket(state_dir)
    if not path.exists():
        raise LinkError(f"no meshssh agent socket at {path}")
    raise LinkError(
        f"the agent at {path} is running, but this build of the client cannot query it yet"
    )
