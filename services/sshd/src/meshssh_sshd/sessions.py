"""The live-connection registry, and the session reports the agent folds into its heartbeat.

Every connection that passed the gate is registered here (by the SSH server object) until it
closes; authentication fills in who it is, and each session channel adds a
:class:`SessionInfo`. Revocation walks this registry when a new map arrives. The reporter
publishes a :class:`SessionsReport` on ``meshssh.sshd.v1.evt.sessions.<peer>`` shortly after
every change and every ``interval`` seconds.

Example::

    live = LiveRegistry()
    record = live.add("c1", origin, peer_server)
    live.session_started(record, info)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.cancellation import raise_if_cancelling
from meshssh_common.logs import BoundLogger
from meshssh_common.session_rules import NONE
from meshssh_common.wire import SessionInfo, SessionRules, SessionsReport
from meshssh_sshd.origin import Origin

__all__ = ["Closer", "LiveConnection", "LiveRegistry", "SessionsReporter"]

_DEBOUNCE = 0.1


class Closer(Protocol):
    """How the registry closes a connection (implemented by the per-connection server)."""

    def revoke(self, reason: str) -> None:
        """Close with "access revoked"; ``reason`` is shown on the sessions' stderr."""

    def shutdown(self) -> None:
        """Close because the server stops."""


@dataclass(eq=False)
class LiveConnection:
    """One connection that passed the gate; fields after ``closer`` are set by auth."""

    conn_id: str
    origin: Origin
    closer: Closer
    local_user: str = ""  # set by auth: the local account the client asked for
    jwt_user: str = ""  # set by auth: the user id from the token ("" in machine mode)
    authenticated: bool = False
    rules: SessionRules = NONE  # set by auth: recording and time limits of the login's rules
    agent_path: str = ""  # set by agent forwarding: the socket sessions get as SSH_AUTH_SOCK
    sessions: dict[str, SessionInfo] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # shown on the next session's stderr


class LiveRegistry:
    """All live connections of this server."""

    def __init__(self) -> None:
        self.connections: dict[str, LiveConnection] = {}
        self.changed = asyncio.Event()

    def add(self, conn_id: str, origin: Origin, closer: Closer) -> LiveConnection:
        """Register a connection that passed the gate."""
        record = LiveConnection(conn_id, origin, closer)
        self.connections[conn_id] = record
        return record

    def remove(self, conn_id: str) -> None:
        """Forget a closed connection."""
        record = self.connections.pop(conn_id, None)
        if record is not None and record.sessions:
            self.changed.set()

    def authenticated(self) -> list[LiveConnection]:
        """The connections that completed authentication."""
        return [c for c in self.connections.values() if c.authenticated]

    def session_started(self, record: LiveConnection, info: SessionInfo) -> None:
        """Add a session channel to ``record``."""
        record.sessions[info.session_id] = info
        self.changed.set()

    def session_ended(self, record: LiveConnection, session_id: str) -> None:
        """Remove a session channel from ``record``."""
        if record.sessions.pop(session_id, None) is not None:
            self.changed.set()

    def session_count(self) -> int:
        """How many session channels are live."""
        return sum(len(c.sessions) for c in self.connections.values())

    def sessions(self) -> tuple[SessionInfo, ...]:
        """Every live session, oldest first."""
        infos = [s for c in self.connections.values() for s in c.sessions.values()]
        return tuple(sorted(infos, key=lambda s: s.started_at))


class SessionsReporter:
    """Publishes the live sessions on change (debounced) and periodically."""

    def __init__(
        self,
        nc: NATS,
        peer_id: str,
        registry: LiveRegistry,
        log: BoundLogger,
        *,
        interval: float,
    ) -> None:
        self._nc = nc
        self._subject = subjects.sshd_sessions(peer_id)
        self._peer_id = peer_id
        self._registry = registry
        self._log = log
        self._interval = interval

    async def run(self) -> None:
        """Publish until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._registry.changed.wait()
                    await asyncio.sleep(_DEBOUNCE)
            self._registry.changed.clear()
            await self.publish()
            raise_if_cancelling()

    async def publish(self) -> None:
        """Publish one report now (errors are logged, never raised)."""
        report = SessionsReport(
            peer_id=self._peer_id, sent_at=time.time(), sessions=self._registry.sessions()
        )
        try:
            await self._nc.publish(self._subject, codec.encode(report))
        except Exception as e:  # a closed or reconnecting connection: next round retries
            self._log.debug("sessions report not sent", extra={"error": repr(e)})
