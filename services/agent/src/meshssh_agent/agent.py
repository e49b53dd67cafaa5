"""The peer agent behind ``meshssh up``: registration, the map, supervision, the local socket.

Lifecycle of :meth:`Agent.run`, in order:
1. take the state dir's lock (one agent per state dir), create the host key, resolve the relay
   mode and the ports (port 0: a free one picked once), serve the local socket (``status``
   works from here on, showing registration progress);
2. connect to NATS and register (retrying while management does not answer);
3. apply the registration's map, then watch the peer's KV key, applying only higher serials;
   after every applied map the children are started or stopped (SPEC §2) and the map
   listeners run (:attr:`Agent.map_listeners`; the first keeps the OpenSSH drop-in current,
   :mod:`meshssh_agent.dropin`);
4. publish a heartbeat every few seconds and whenever a child changes state; fold sshd's
   session reports into it; track remote peers' heartbeats for their online state;
5. on ``down`` or SIGTERM/SIGINT: stop both children (SIGTERM, then SIGKILL) and wait for
   them, remove the OpenSSH drop-in, drain NATS, remove the socket. Exit 0; 1 when
   registration was refused; 2 on a bad setting. The lock is never released by hand: it
   stays held until the process exits and the kernel drops it, so a held lock always means
   a live agent (``meshssh down`` also waits for the pids themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_agent.children import (
    choose_relay_mode,
    relay_argv,
    relay_wanted,
    sshd_argv,
    sshd_wanted,
)
from meshssh_agent.control.requests import AgentRequests
from meshssh_agent.control.server import AgentSocketServer
from meshssh_agent.dropin import DropinKeeper, meshssh_executable
from meshssh_agent.maps import MapState, watch_map
from meshssh_agent.registration import register
from meshssh_agent.settings import AgentConfig
from meshssh_agent.state_dir import AgentLock, prepare_state_dir
from meshssh_agent.supervisor import Child
from meshssh_agent.tokens import AgentTokenCache, device_flow_fetch
from meshssh_common import codec, subjects
from meshssh_common.connection import connect_nats
from meshssh_common.errors import ConfigError, MeshError
from meshssh_common.host_keys import HostKey, load_or_create_host_key
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.rpc import request, subscribe_typed
from meshssh_common.wire import (
    Heartbeat,
    MetaReply,
    MetaUpdate,
    NetworkMap,
    SessionInfo,
    SessionsReport,
)
from meshssh_common.wire.agent import TokenGetRequest

__all__ = ["Agent", "MapListener"]

MapListener = Callable[[NetworkMap | None, AgentConfig], Awaitable[None]]
"""Runs after every applied map (None: the peer was removed); failures are logged only."""


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _executable() -> str:
    try:
        return meshssh_executable()
    except FileNotFoundError:
        return "meshssh"  # the drop-in then relies on PATH


class Agent:
    """One peer's agent (see the module docstring)."""

    def __init__(self, config: AgentConfig, *, log: BoundLogger) -> None:
        self.config = config
        self.log = log
        self.metrics = ServiceMetrics("agent")
        self.relay_mode = choose_relay_mode(config)
        self.maps = MapState(self._map_changed)
        self.dropin = DropinKeeper(
            _executable(), state_dir=config.state_dir, window=3 * config.heartbeat_interval
        )
        self.map_listeners: list[MapListener] = [self.dropin]
        self.tokens = AgentTokenCache(
            device_flow_fetch(config.management_url), ttl=config.flags.jwt_cache_ttl
        )
        self.nc: NATS | None = None
        self.host_key: HostKey | None = None
        self.peer_id = ""
        self.credential = ""
        self.registered = False
        self.register_error = ""
        self.sessions: tuple[SessionInfo, ...] = ()
        self.last_seen: dict[str, float] = {}
        self.started = time.monotonic()
        self.stop = asyncio.Event()
        self._beat = asyncio.Event()
        self._listener_tasks: set[asyncio.Task[None]] = set()
        self._lock: AgentLock | None = None
        self.ssh_port = config.ssh_port or _free_port(config.mesh_ip)
        self.relay_port = config.relay_port or _free_port(config.mesh_ip)
        self.sshd = Child(
            "sshd",
            lambda: sshd_argv(self._ported(), self.peer_id),
            log=log,
            stop_timeout=config.child_stop_timeout,
            on_change=self._child_changed,
        )
        self.relay = Child(
            "relay",
            lambda: relay_argv(self._ported(), self.peer_id, self.relay_mode),
            log=log,
            stop_timeout=config.child_stop_timeout,
            on_killed=self._relay_cleanup,
            on_change=self._child_changed,
        )

    def _ported(self) -> AgentConfig:
        return replace(self.config, ssh_port=self.ssh_port, relay_port=self.relay_port)

    @property
    def ssh_enabled(self) -> bool:
        """The management switch, as the current map says."""
        return self.maps.current is not None and self.maps.current.peer.ssh_enabled

    async def run(self) -> int:
        """Run until ``down`` or a signal; returns the exit code (see the module docstring)."""
        try:
            prepare_state_dir(self.config.state_dir)
            lock = AgentLock.acquire(self.config.lock_path)
        except MeshError as e:
            self.log.error("cannot start", extra={"error": str(e)})
            return 2 if isinstance(e, ConfigError) else 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        server = AgentSocketServer(
            self.config.socket_path,
            AgentRequests(self).handle,
            log=self.log,
            long_running=lambda r: isinstance(r, TokenGetRequest) and r.login,
        )
        try:
            self.host_key = load_or_create_host_key(self.config.host_key_path)
            await server.start()
            self.log.info(
                "agent serving",
                extra={"socket": str(self.config.socket_path), "relay_mode": self.relay_mode.mode},
            )
            return await self._until_stopped()
        except ConfigError as e:
            self.log.error("bad setting", extra={"error": str(e)})
            return 2
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.dropin.remove(self.config)
            await server.stop()
            if self.nc is not None and not self.nc.is_closed:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await self.nc.drain()
            await self.tokens.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self._lock = lock  # held until the process exits (see the module docstring)
            self.log.info("agent stopped")

    async def _until_stopped(self) -> int:
        login = asyncio.create_task(self._login())
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({login, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not login.done():  # stopped while still connecting or registering
            login.cancel()
            await asyncio.gather(login, return_exceptions=True)
            return 0
        stopper.cancel()
        try:
            login.result()
        except ConfigError:
            raise
        except MeshError as e:
            self.log.error("registration refused", extra={"error": str(e)})
            sys.stderr.write(f"meshssh up: registration refused: {e.public}\n")
            return 1
        await self._serve()
        return 0

    async def _login(self) -> None:
        assert self.host_key is not None
        self.nc = await connect_nats(
            self.config.nats_url,
            name=f"meshssh-agent/{self.config.name}",
            metrics=self.metrics,
            log=self.log,
            creds=self.config.nats_creds,
        )

        def progress(text: str) -> None:
            self.register_error = text

        reply = await register(
            self.nc, self.config, self.host_key.public_line, log=self.log, progress=progress
        )
        self.peer_id, self.credential = reply.peer_id, reply.credential
        self.registered, self.register_error = True, ""
        self.maps.offer(reply.netmap)

    async def _serve(self) -> None:
        assert self.nc is not None
        nc, log = self.nc, self.log.bind(peer=self.peer_id)
        subs = [
            await subscribe_typed(
                nc, subjects.sshd_sessions(self.peer_id), SessionsReport, self._on_sessions,
                name="sessions", metrics=self.metrics, log=log,
            ),
            await subscribe_typed(
                nc, subjects.HEARTBEAT_ALL, Heartbeat, self._on_heartbeat,
                name="presence", metrics=self.metrics, log=log,
            ),
        ]  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            children = [tg.create_task(self.sshd.run()), tg.create_task(self.relay.run())]
            helpers = [
                tg.create_task(
                    watch_map(nc, self.peer_id, self.maps, log=log, metrics=self.metrics)
                ),
                tg.create_task(self._heartbeats()),
            ]
            self._evaluate()
            await self.stop.wait()
            log.info("stopping: children first")
            await asyncio.gather(self.sshd.shutdown(), self.relay.shutdown())
            await asyncio.gather(*children)
            await self._publish_heartbeat()  # the last word: SSH is no longer running
            for task in helpers:
                task.cancel()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in list(self._listener_tasks):
            task.cancel()

    def _map_changed(self, netmap: NetworkMap | None) -> None:
        self.tokens.follow(netmap.peer.jwt if netmap else None)
        self._evaluate()
        for listener in self.map_listeners:
            task = asyncio.get_running_loop().create_task(self._run_listener(listener, netmap))
            self._listener_tasks.add(task)
            task.add_done_callback(self._listener_tasks.discard)

    async def _run_listener(self, listener: MapListener, netmap: NetworkMap | None) -> None:
        try:
            await listener(netmap, self.config)
        except Exception:
            self.log.exception("map listener failed", extra={"listener": repr(listener)})

    def _evaluate(self) -> None:
        """Start or stop the children for the current flags and map (SPEC §2)."""
        if not self.registered or self.stop.is_set():
            return  # not yet, or stopping: shutdown() decides now
        self.sshd.want(sshd_wanted(self.config, self.ssh_enabled))
        # A relay that sshd's connections pass through outlives a stopping sshd, so its last
        # words ("access revoked" when SSH is switched off) still reach the clients.
        draining = self.relay.desired and self.sshd.state != "stopped"
        self.relay.want(relay_wanted(self.config, self.ssh_enabled) or draining)

    def _child_changed(self) -> None:
        if self.sshd.state != "running":
            self.sessions = ()
        self._evaluate()  # e.g. sshd has stopped: the relay may follow
        self._beat.set()

    async def reconfigure(self, config: AgentConfig) -> int:
        """Apply new local flags: report them as metadata, restart what they affect.

        Returns:
            The serial management reported for the peer's map after the change.
        """
        old = self.config
        self.config = config
        self.tokens.ttl = float(max(0, config.flags.jwt_cache_ttl))
        serial = 0
        if self.nc is not None and self.registered and self.host_key is not None:
            update = MetaUpdate(
                peer_id=self.peer_id,
                credential=self.credential,
                meta=config.meta(),
                ssh_host_key=self.host_key.public_line,
            )
            reply = await request(self.nc, subjects.POLICY_META, update, MetaReply)
            serial = reply.serial
        if old.flags.sshd_args() != config.flags.sshd_args():
            self.sshd.restart()
        if old.flags.allow_server_ssh != config.flags.allow_server_ssh:
            self.relay.restart()  # its --sshd depends on it
        self._evaluate()
        self.log.info("flags changed", extra={"flags": repr(config.flags), "serial": serial})
        return serial

    async def _relay_cleanup(self) -> None:
        # The relay was SIGKILLed and could not remove its nftables rule: do it for it.
        if self.relay_mode.mode != "nftables":
            return
        argv = [*relay_argv(self._ported(), self.peer_id, self.relay_mode), "--cleanup"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self.log.info("relay rule cleanup ran", extra={"exit_code": proc.returncode})

    async def _on_sessions(self, report: SessionsReport, _msg: Msg) -> None:
        if report.peer_id == self.peer_id and self.sshd.state == "running":
            self.sessions = report.sessions

    async def _on_heartbeat(self, beat: Heartbeat, _msg: Msg) -> None:
        netmap = self.maps.current
        if netmap is not None and any(p.id == beat.peer_id for p in netmap.remote_peers):
            self.last_seen[beat.peer_id] = time.monotonic()
            self.dropin.heartbeat(beat, netmap, self.config)

    def online(self, peer_id: str) -> bool | None:
        """Whether a remote peer sent a heartbeat lately (None: too early to say)."""
        window = 3 * self.config.heartbeat_interval
        seen = self.last_seen.get(peer_id)
        if seen is not None and time.monotonic() - seen <= window:
            return True
        if time.monotonic() - self.started < window:
            return None
        return False

    async def _heartbeats(self) -> None:
        while True:
            await self._publish_heartbeat()
            self.dropin.refresh(self.maps.current, self.config)  # quiet peers' markers expire
            self._beat.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.heartbeat_interval):
                    await self._beat.wait()

    def heartbeat(self) -> Heartbeat:
        """The heartbeat as it would be sent now."""
        running = self.relay.state == "running"
        return Heartbeat(
            peer_id=self.peer_id,
            sent_at=time.time(),
            serial=self.maps.serial,
            ssh_running=self.sshd.state == "running",
            relay_mode=self.relay_mode.mode if running else "off",  # type: ignore[arg-type]
            ssh_port=self.ssh_port,
            relay_port=self.relay_port,
            sessions=self.sessions,
            peer_mesh_ip=self.config.mesh_ip,
        )

    async def _publish_heartbeat(self) -> None:
        if self.nc is None or not self.nc.is_connected or not self.peer_id:
            return
        with contextlib.suppress(Exception):
            await self.nc.publish(subjects.heartbeat(self.peer_id), codec.encode(self.heartbeat()))
