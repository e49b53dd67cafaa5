"""Presence: this peer's heartbeat out, the other peers' heartbeats and sshd's sessions in.

- The agent publishes a :class:`~meshssh_common.wire.Heartbeat` on
  ``meshssh.peer.v1.<id>.heartbeat`` every ``--heartbeat-interval`` seconds and at once when a
  child changes state (:meth:`Presence.poke`), and a last one when it stops (SSH no longer
  running).
- It listens to every peer's heartbeat (``meshssh.peer.v1.*.heartbeat``); a remote peer of the
  map is online while it was heard within three intervals (``meshssh status``), and its
  heartbeat keeps the drop-in's server markers current.
- It folds meshssh-sshd's session reports (``meshssh.sshd.v1.<id>.sessions``) into its own
  heartbeat while sshd runs.

Example::

    presence = Presence(settings, children, maps, log=log, metrics=metrics, on_remote=keeper)
    await presence.subscribe(nc, peer_id)
    tasks.spawn(presence.beat(nc, peer_id), "heartbeat")
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
    """Heartbeats out and in, and sshd's sessions (see the module docstring).

    Args:
        settings: the agent's current settings (ports resolved).
        children: the agent's children (what the heartbeat reports).
        maps: the peer's map (serial; which peers are remote).
        on_remote: told each remote peer's heartbeat (the drop-in's markers).
        on_tick: called after each own heartbeat (markers of quiet peers expire).
    """

    def __init__(
        self,
        settings: Callable[[], AgentSettings],
        children: Children,
        maps: PeerMap,
        *,
        log: BoundLogger,
        metrics: ServiceMetrics,
        on_remote: Callable[[Heartbeat], None],
        on_tick: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._children = children
        self._maps = maps
        self._log = log
        self._metrics = metrics
        self._on_remote = on_remote
        self._on_tick = on_tick
        self.peer_id = ""
        self.sessions: tuple[SessionInfo, ...] = ()
        self.last_seen: dict[str, float] = {}
        self.started = time.monotonic()
        self._poke = asyncio.Event()
        self._subs: list[Subscription] = []

    @property
    def window(self) -> float:
        """How long a heartbeat counts (three intervals)."""
        return 3 * self._settings().heartbeat_interval

    def poke(self) -> None:
        """Something changed: publish the heartbeat now; sessions end with a stopped sshd."""
        if self._children.sshd.state != "running":
            self.sessions = ()
        self._poke.set()

    def online(self, peer_id: str) -> bool | None:
        """Whether a remote peer sent a heartbeat lately (None: too early to say)."""
        seen = self.last_seen.get(peer_id)
        if seen is not None and time.monotonic() - seen <= self.window:
            return True
        if time.monotonic() - self.started < self.window:
            return None
        return False

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
        """Listen to sshd's session reports and to every peer's heartbeat."""
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
            await subscribe_typed(
                nc,
                subjects.HEARTBEAT_ALL,
                Heartbeat,
                self._on_heartbeat,
                name="presence",
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
            self._on_tick()
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

    async def _on_heartbeat(self, beat: Heartbeat, _msg: Msg) -> None:
        netmap = self._maps.current
        if netmap is not None and any(p.id == beat.peer_id for p in netmap.remote_peers):
            self.last_seen[beat.peer_id] = time.monotonic()
            self._on_remote(beat)
