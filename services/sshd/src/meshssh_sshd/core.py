"""What every connection of the server shares: settings, watchers, auth, registry, tasks.

Built once by :class:`meshssh_sshd.server.SshServer` and handed to each per-connection
:class:`meshssh_sshd.peer_server.PeerServer`. Its :class:`meshssh_common.tasks.TaskSet` owns
the tasks that belong to no single coroutine (one per connection, session and forwarded
connection): each is logged if it fails, and all are cancelled and awaited at shutdown, so
none is fire-and-forget.

Example::

    core.tasks.spawn(handle(sock), "conn")
    await core.tasks.close()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from meshssh_common.audit_log import AuditLog
from meshssh_common.logs import BoundLogger
from meshssh_common.peer_map import PeerMap
from meshssh_common.tasks import TaskSet
from meshssh_sshd.accounts import Accounts
from meshssh_sshd.agent_socket import AgentSockets
from meshssh_sshd.auth import Authenticator
from meshssh_sshd.browser_check import BrowserCheck
from meshssh_sshd.jwks_watch import JwksWatch
from meshssh_sshd.metrics import SshdMetrics
from meshssh_sshd.process_launch import ChildProcess
from meshssh_sshd.rate_limit import FailureLimiter
from meshssh_sshd.sessions import LiveRegistry
from meshssh_sshd.settings import SshdSettings

__all__ = ["SshdCore"]


@dataclass(eq=False)
class SshdCore:
    """The shared state of one running SSH server."""

    settings: SshdSettings
    log: BoundLogger
    metrics: SshdMetrics
    audit: AuditLog
    maps: PeerMap
    keys: JwksWatch
    auth: Authenticator
    browser: BrowserCheck
    accounts: Accounts
    limiter: FailureLimiter
    live: LiveRegistry
    tasks: TaskSet
    sftp_server: str | None
    agents: AgentSockets  # the agent sockets of ssh -A (--enable-ssh-agent-forwarding)
    js: JetStreamContext | None = None  # where session recordings go
    open_sessions: int = 0  # session channels open now (the max-sessions limit)
    children: set[ChildProcess] = field(default_factory=set)  # running session processes
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no session is open
    startups: int = 0  # connections past the gate, not yet authenticated (max-startups)
    startups_by_source: dict[str, int] = field(default_factory=dict)  # the same, per source
    draining: bool = False  # set at shutdown: no new connections or sessions

    def __post_init__(self) -> None:
        self.idle.set()

    def session_opened(self) -> None:
        """Count a session channel that opened."""
        self.open_sessions += 1
        self.idle.clear()
        self.metrics.active_sessions.inc()

    def session_closed(self) -> None:
        """Count a session channel that closed."""
        self.open_sessions -= 1
        self.metrics.active_sessions.dec()
        if self.open_sessions <= 0:
            self.idle.set()

    def startup_began(self, source: str) -> None:
        """A connection from ``source`` passed the gate and is not authenticated yet."""
        self.startups += 1
        self.startups_by_source[source] = self.startups_by_source.get(source, 0) + 1

    def startup_ended(self, source: str) -> None:
        """That connection authenticated or closed."""
        self.startups -= 1
        left = self.startups_by_source.get(source, 0) - 1
        if left > 0:
            self.startups_by_source[source] = left
        else:
            self.startups_by_source.pop(source, None)

    @property
    def peer_id(self) -> str:
        """This peer's id."""
        return self.settings.peer_id

    @property
    def jwt_mode(self) -> bool:
        """Whether logins need a JWT (False with ``--disable-ssh-auth``)."""
        return not self.settings.disable_ssh_auth
