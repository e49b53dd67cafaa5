"""Agent forwarding (``ssh -A``, SPEC §3): a socket that only the session's user can use.

asyncssh answers ``auth-agent-req@openssh.com`` by calling its connection's
``create_agent_listener``. :class:`AgentConnection`, the server's connection class, first asks
the connection's server object (:class:`AgentHost`, the per-connection ``PeerServer``) whether
the peer allows it (``--enable-ssh-agent-forwarding``; when off the session is told "Agent
forwarding not available"), then lets asyncssh set up its side, then asks the host for the
socket the sessions will use. asyncssh's own listener sits in a root-only directory, so a
session that switched to another user could not reach it; :class:`AgentSockets` makes the one
the sessions get (``SSH_AUTH_SOCK``):

- all of them live under one directory of the server, ``<tmp>/meshssh-agent-XXXX``, owned by
  the server's account, mode 0711 (others may pass through, never list or rename);
- each connection gets its own directory in it, created 0700 by the server, with the socket
  ``agent`` inside: the socket is made mode 0600 and, when the server switches users, both
  are then given to the target user's uid and gid (as OpenSSH's sshd does), so only that
  user (and root) can connect;
- the socket and its directory are removed when the connection closes (OpenSSH keeps the
  agent socket for the whole connection too); the base directory when the server stops.

Every connection on the socket becomes one agent channel back to the client.

Example::

    sockets = AgentSockets(log)
    socket = await sockets.open(conn, account)     # socket.path -> SSH_AUTH_SOCK
    socket.close()
    sockets.close()
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

import asyncssh
from asyncssh.listener import SSHListener, create_unix_forward_listener

from meshssh_common.logs import BoundLogger
from meshssh_sshd.accounts import Account

__all__ = ["AGENT_REFUSED", "AgentConnection", "AgentHost", "AgentSocket", "AgentSockets"]

AGENT_REFUSED = (
    "Agent forwarding not available: agent forwarding is off on this peer; "
    "start the peer with --enable-ssh-agent-forwarding"
)
_SOCKET_NAME = "agent"


@runtime_checkable
class AgentHost(Protocol):
    """What :class:`AgentConnection` asks of its server object (the ``PeerServer``)."""

    def agent_allowed(self) -> bool:
        """Whether this connection may forward an agent (False: refused, the user is told)."""
        ...

    async def agent_socket_needed(self, conn: asyncssh.SSHServerConnection) -> bool:
        """The agent request was accepted by asyncssh: make the user's socket (False: failed)."""
        ...


class AgentConnection(asyncssh.SSHServerConnection):
    """asyncssh's server connection, with agent requests decided by its :class:`AgentHost`."""

    async def create_agent_listener(self) -> bool:
        """Called by asyncssh for each ``auth-agent-req``; True accepts it."""
        host = self.get_owner()
        if not isinstance(host, AgentHost) or not host.agent_allowed():
            return False
        if not await super().create_agent_listener():
            return False
        return await host.agent_socket_needed(self)


class AgentSocket:
    """One connection's agent socket (see the module docstring)."""

    def __init__(self, directory: Path, listener: SSHListener) -> None:
        self.directory = directory
        self.path = str(directory / _SOCKET_NAME)
        self._listener: SSHListener | None = listener

    def close(self) -> None:
        """Stop listening and remove the socket with its directory (idempotent)."""
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        shutil.rmtree(self.directory, ignore_errors=True)


class AgentSockets:
    """The server's agent sockets and the private directory that holds them."""

    def __init__(self, log: BoundLogger) -> None:
        self._log = log
        self._base: Path | None = None  # made on first use

    def _base_dir(self) -> Path:
        if self._base is None:
            base = Path(tempfile.mkdtemp(prefix="meshssh-agent-"))
            os.chmod(base, 0o711)  # users pass through to their own directory, nothing more
            self._base = base
        return self._base

    async def open(self, conn: asyncssh.SSHServerConnection, account: Account) -> AgentSocket:
        """Listen on a new socket whose connections become agent channels on ``conn``.

        Raises:
            OSError: the directory or the socket could not be made or handed over.
        """
        directory = Path(tempfile.mkdtemp(prefix="agent.", dir=self._base_dir()))  # 0700, ours
        try:
            listener = await create_unix_forward_listener(
                conn,
                asyncio.get_running_loop(),
                conn.create_agent_connection,
                str(directory / _SOCKET_NAME),
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        agent = AgentSocket(directory, listener)
        try:
            os.chmod(agent.path, 0o600)
            if account.switch:
                # The socket first, its directory last: until then only the server gets in.
                os.chown(agent.path, account.uid, account.gid, follow_symlinks=False)
                os.chown(directory, account.uid, account.gid, follow_symlinks=False)
        except BaseException:
            agent.close()
            raise
        return agent

    def close(self) -> None:
        """Remove the base directory (every connection's socket was closed before)."""
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
