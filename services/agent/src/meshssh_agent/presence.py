"""Presence: this peer's heartbeat out, sshd's sessions in.

- The agent publishes a :class:`~meshssh_common.wire.Heartbeat` on its own heartbeat subject
  every ``--heartbeat-interval`` seconds and at once when a child changes state
  (:meth:`Presence.poke`), and a last one when it stops (SSH no longer running). Management
  hears it; other peers do not (their permissions forbid it): what they need of this peer
  (SSH running, its ports) reaches them in their maps.
- It folds meshssh-sshd's session reports (``meshssh.sshd.v1.evt.sessions.<id>``) into its own
  heartbeat while sshd runs.

Example::

    presence = Presence(settings, children, maps, log=log, metrics=metrics)
    await presence.subscribe(nc, peer_id)
    tasks.spawn(presence.beat(nc), "heartbeat")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meshssh_agent.children import Children
from meshssh_agent.settings import AgentSettings
from meshssh_common import codec, subjects
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.rpc import subscribe_typed
from meshssh_common.wire import Heartbeat, SessionInfo, SessionsReport

__all__ = ["Presence"]


class Presence:
    """The heartbeat out and sshd's sessions in (see the module docstring).

    Args:
        settings: the agent's current settings (ports resolved).
        children: the agent's children (what the heartbeat reports).
        maps: the peer's map (its serial).
    """

    def __init__(
        self,
        settings: Callable[[], AgentSettings],
        children: Children,
        maps: PeerMap,
        *,
        log: BoundLogger,
        metrics: ServiceMetrics,
    ) -> None:
        self._settings = settings
        self._children = children
        self._maps = maps
        self._log = log
        self._metrics = metrics
        self.peer_id = ""
        self.sessions: tuple[SessionInfo, ...] = ()
        self._poke = asyncio.Event()
        self._subs: list[Subscription] = []

    def poke(self) -> None:
        """Something changed: publish the heartbeat now; sessions end with a stopped sshd."""
        if self._children.sshd.state != "running":
            self.sessions = ()
        self._poke.set()

    def heartbeat(self) -> Heartbeat:
        """The heartbeat as it would be sent now."""
        settings, children = self._settings(), self._children
        relay_running = children.relay.state == "running"
        return Heartbeat(
            peer_id=self.peer_id,
            sent_at=time.time(),
            serial=self._maps.serial,
            ssh_running=children.sshd.state == "running",
            relay_mode=children.relay_mode.mode if relay_running else "off",  # type: ignore[arg-type]
            ssh_port=settings.ssh_port,
            relay_port=settings.relay_port,
            sessions=self.sessions,
            peer_mesh_ip=settings.mesh_ip,
        )

    async def subscribe(self, nc: NATS, peer_id: str) -> None:
        """Listen to this peer's sshd's session reports."""
        self.peer_id = peer_id
        log = self._log
        self._subs = [
            await subscribe_typed(
                nc,
                subjects.sshd_sessions(peer_id),
                SessionsReport,
                self._on_sessions,
                name="sessions",
                metrics=self._metrics,
                log=log,
            ),
        ]

    async def unsubscribe(self) -> None:
        """Stop listening."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    async def beat(self, nc: NATS) -> None:
        """Publish the heartbeat every interval and on :meth:`poke`, until cancelled."""
        while True:
            await self.publish(nc)
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings().heartbeat_interval):
                    await self._poke.wait()

    async def publish(self, nc: NATS) -> None:
        """Publish the heartbeat once (nothing while disconnected)."""
        if not nc.is_connected or not self.peer_id:
            return
        with contextlib.suppress(Exception):
            await nc.publish(subjects.heartbeat(self.peer_id), codec.encode(self.heartbeat()))

    async def _on_sessions(self, report: SessionsReport, _msg: Msg) -> None:
        if report.peer_id == self.peer_id and self._children.sshd.state == "running":
            self.sessions = report.sessions
