"""The peer agent (``meshssh-agent``): registration, the map, children, presence, the socket.

Lifecycle of :meth:`Agent.run`, in order:
1. take the state dir's lock (one agent per state dir), create the host key, resolve the relay
   mode and the ports (port 0: a free one picked once), serve the local socket (``status``
   works from here on, showing registration progress);
2. register over REST (:mod:`meshssh_common.registration`; retried while management does not
   answer): the peer has no NATS identity before. The reply's JWT for the peer's own NATS key
   becomes ``<state-dir>/nats.creds`` (:mod:`meshssh_common.bus_identity`);
3. run on the service runner (:func:`meshssh_common.service.run_service`) with that creds file:
   the ops server (``/healthz``, ``/readyz``, ``/metrics``), NATS, then :meth:`Agent.serve`;
4. apply the registration's map, then follow the peer's KV key
   (:class:`~meshssh_common.peer_map.PeerMap`); after every applied map the children are
   started or stopped (SPEC §2) with the same creds file, and the map listeners run
   (:attr:`Agent.map_listeners`; the first keeps the OpenSSH drop-in current);
5. the heartbeat out and sshd's sessions in (:mod:`meshssh_agent.presence`); the JWT renewed at
   half-life (:mod:`meshssh_common.renewal`);
6. on ``down`` or SIGTERM/SIGINT (drain): stop both children (SIGTERM, then SIGKILL) and wait
   for them, publish a last heartbeat, drain NATS, remove the OpenSSH drop-in and the socket.
   Exit 0; 1 when registration or a renewal was refused, or the JWT expired unrenewed; 2 on a
   bad setting. The lock is never released by hand: it stays held until the process exits
   and the kernel drops it, so a held lock always means a live agent (``meshssh down`` also
   waits for the pids themselves).

The agent's own ``--nats-creds`` is ignored (with a warning): the peer's identity comes from
registration. ``--nats-ca`` is used by the agent and handed to its children.

``/readyz`` is 200 while NATS is connected, the peer is registered, its map is held and the
watch has caught up with KV, and every child that should run is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
from nats.aio.client import Client as NATS

from meshssh_agent.children import Children
from meshssh_agent.control.requests import AgentRequests
from meshssh_agent.control.server import AgentSocketServer
from meshssh_agent.dropin import DropinKeeper, meshssh_executable
from meshssh_agent.metrics import AgentMetrics
from meshssh_agent.presence import Presence
from meshssh_agent.settings import AgentSettings
from meshssh_agent.state_dir import AgentLock, prepare_state_dir
from meshssh_agent.tokens import AgentTokenCache, device_flow_fetch
from meshssh_common import subjects
from meshssh_common.bus_identity import BusIdentity
from meshssh_common.errors import ConfigError, MeshError, WireError
from meshssh_common.host_keys import HostKey, load_or_create_host_key
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.registration import PeerLogin, register
from meshssh_common.renewal import keep_renewed
from meshssh_common.rpc import request
from meshssh_common.service import ServiceContext, run_service, unless_stopped
from meshssh_common.signed_doc import PINS_FILE, write_pins
from meshssh_common.tasks import TaskSet
from meshssh_common.token_exchange import exchange_token
from meshssh_common.version import VERSION
from meshssh_common.wire import MetaReply, MetaUpdate, NetworkMap, PeerFlags, RegisterReply
from meshssh_common.wire.agent import AgentStatus, PeerStatus, PeerTokenRequest, TokenGetRequest
from meshssh_common.wire.authn import TokenExchangeReply

__all__ = ["Agent", "MapListener"]

MapListener = Callable[[NetworkMap | None, AgentSettings], Awaitable[None]]
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
    """One peer's agent (see the module docstring).

    Raises:
        ConfigError: ``--relay-mode nftables`` cannot run here.
    """

    def __init__(self, settings: AgentSettings, *, setup_key: str, log: BoundLogger) -> None:
        if settings.nats_creds is not None:
            log.warning(
                "--nats-creds / MESHSSH_NATS_CREDS ignored: the peer's NATS identity comes "
                "from registration (<state-dir>/nats.creds)",
                extra={"ignored": str(settings.nats_creds)},
            )
        self.settings = settings.model_copy(
            update={
                "ssh_port": settings.ssh_port or _free_port(settings.mesh_ip),
                "relay_port": settings.relay_port or _free_port(settings.mesh_ip),
                "nats_creds": None,  # set from registration
            }
        )
        self.log = log
        self.metrics = ServiceMetrics("agent")
        self.m = AgentMetrics(self.metrics)
        self._setup_key = setup_key
        self.maps = PeerMap(log=log, metrics=self.metrics, pins=settings.state_dir / PINS_FILE)
        self.maps.on_change(self._map_changed)
        self.children = Children(
            lambda: self.settings,
            lambda: self.peer_id,
            log=log,
            on_change=self._child_changed,
            on_restart=lambda name: self.m.child_restarts.labels(child=name).inc(),
        )
        self.dropin = DropinKeeper(
            _executable(), state_dir=settings.state_dir, on_write=self.m.dropin_writes.inc
        )
        self.map_listeners: list[MapListener] = [self.dropin]
        self._tokens = AgentTokenCache(
            device_flow_fetch(settings.management_url), ttl=settings.ssh_jwt_cache_ttl
        )
        self.presence = Presence(
            lambda: self.settings, self.children, self.maps, log=log, metrics=self.metrics
        )
        self.identity = BusIdentity(settings.files.nats_seed, settings.files.nats_creds, log=log)
        self._http: httpx.AsyncClient | None = None
        self._lost = asyncio.Event()  # the bus identity is gone: serve() ends, exit 1
        self._expires_at: float | None = None
        self.tasks = TaskSet(log)
        self.nc: NATS | None = None
        self.host_key: HostKey | None = None
        self.peer_id = ""
        self.credential = ""
        self.registered = False
        self.register_error = "registering"
        self.exit_code = 0
        self.ops_url = ""
        self.stop = asyncio.Event()
        self._map_applied = 0.0
        self.m.map_age.set_function(
            lambda: time.monotonic() - self._map_applied if self._map_applied else 0.0
        )
        self._lock: AgentLock | None = None

    @property
    def tokens(self) -> AgentTokenCache:
        """The per-uid JWT cache behind the socket."""
        return self._tokens

    async def exchange(self, idp_token: str, target_peer: str) -> TokenExchangeReply:
        """Trade the user's IdP token at authn for a per-peer token (never cached).

        Raises:
            MeshError: see :func:`meshssh_common.token_exchange.exchange_token`.
        """
        return await exchange_token(self.nc, self.peer_id, idp_token, target_peer)

    def request_stop(self) -> None:
        """Stop the agent (``down``): the runner drains as for SIGTERM."""
        self.stop.set()

    def readiness(self) -> dict[str, bool]:
        """The agent's own ``/readyz`` checks (the runner adds ``nats`` and ``serving``)."""
        return {
            "registered": self.registered,
            "map": self.maps.current is not None and self.maps.received.is_set(),
            "children": self.children.up,
        }

    async def run(self) -> int:
        """Run until ``down`` or a signal; returns the exit code (see the module docstring)."""
        files = self.settings.files
        try:
            prepare_state_dir(self.settings.state_dir)
            lock = AgentLock.acquire(files.lock)
        except MeshError as e:
            self.log.error("cannot start", extra={"error": str(e)})
            sys.stderr.write(f"meshssh-agent: {e}\n")
            return 2 if isinstance(e, ConfigError) else 1
        server = AgentSocketServer(
            files.socket,
            AgentRequests(self, self.m, log=self.log).handle,
            log=self.log,
            long_running=lambda r: (
                isinstance(r, PeerTokenRequest) or (isinstance(r, TokenGetRequest) and r.login)
            ),
        )
        self._http = httpx.AsyncClient()
        try:
            self.host_key = load_or_create_host_key(files.host_key)
            await server.start()
            self.log.info(
                "agent serving",
                extra={"socket": str(files.socket), "relay_mode": self.children.relay_mode.mode},
            )
            if not await self._login_until_stopped():
                return self.exit_code
            code = await run_service(
                "agent",
                self.settings,
                self.serve,
                metrics=self.metrics,
                stop=self.stop,
                checks=self.readiness,
            )
            return code or self.exit_code
        except ConfigError as e:
            self.log.error("bad setting", extra={"error": str(e)})
            sys.stderr.write(f"meshssh-agent: bad setting {e}\n")
            return 2
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.dropin.remove(self.settings)
            await server.stop()
            await self._tokens.aclose()
            await self._http.aclose()
            self._lock = lock  # held until the process exits (see the module docstring)
            self.log.info("agent stopped")

    async def _login_until_stopped(self) -> bool:
        """Register (before NATS: the peer has no bus identity yet), or stop on a signal.

        Returns:
            True once registered; False when stopped (exit 0) or refused (exit 1).

        Raises:
            ConfigError: a missing management URL or setup key.
        """
        login = await unless_stopped(self._login(), self.stop)
        if login is None:
            return False
        try:
            login.result()
        except ConfigError:
            raise
        except MeshError as e:
            self.log.error("registration refused", extra={"error": str(e)})
            sys.stderr.write(f"meshssh up: registration refused: {e.public}\n")
            self.exit_code = 1
            return False
        return not self.stop.is_set()

    async def serve(self, ctx: ServiceContext[AgentSettings]) -> None:
        """The runner's body: follow the map and renew the JWT until cancelled (then drain)."""
        self.nc, self.ops_url = ctx.nc, ctx.ops_url
        log = self.log.bind(peer=self.peer_id)
        await self.presence.subscribe(ctx.nc, self.peer_id)
        for child in self.children.all:
            self.tasks.spawn(child.run(), child.name)
        self.tasks.spawn(self.maps.follow(ctx.nc, self.peer_id), "map")
        self.tasks.spawn(self.presence.beat(ctx.nc), "heartbeat")
        self.tasks.spawn(self._keep_renewed(), "renewal")
        self.children.enabled = True
        self.children.evaluate(self.maps.ssh_enabled)
        # `meshssh up` returns once it sees this, then watches the children it now wants.
        self.registered, self.register_error = True, ""
        ctx.ready.set()
        try:
            await self._lost.wait()  # until the runner cancels us, or the bus identity is lost
        finally:
            log.info("stopping: children first")
            await self.children.shutdown()
            await self.presence.publish(ctx.nc)  # the last word: SSH is no longer running
            await self.presence.unsubscribe()
            await self.tasks.close(timeout=2.0)

    async def _register(self, setup_key: str, deadline: float | None = None) -> RegisterReply:
        assert self.host_key is not None
        assert self._http is not None
        s = self.settings
        login = PeerLogin(
            management_url=s.management_url,
            name=s.name,
            mesh_ip=s.mesh_ip,
            meta=s.meta(),
            host_key=self.host_key.public_line,
            credential_path=s.files.credential,
        )
        reply = await register(
            self._http,
            login,
            setup_key,
            identity=self.identity,
            log=self.log,
            progress=self._progress,
            deadline=deadline,
        )
        self.peer_id, self.credential = reply.peer_id, reply.credential
        # The pins first: sshd, the relay and our own map follower verify with them.
        write_pins(self.settings.state_dir / PINS_FILE, reply.pins)
        if deadline is not None and not reply.nats_jwt:
            raise WireError("management renewed the registration without NATS credentials")
        if reply.nats_jwt:
            expires_at = self.identity.store(reply.nats_jwt)
        else:
            # Management issued no bus identity: only an open nats-server will take us.
            self.log.warning("management issued no NATS credentials; connecting without")
            self.identity.forget()
            expires_at = None
        self._expires_at = expires_at
        self.m.creds_expiry.set(expires_at or 0)
        creds = self.identity.creds_path if reply.nats_jwt else None
        if creds != self.settings.nats_creds:
            self.settings = self.settings.model_copy(update={"nats_creds": creds})
        return reply

    def _progress(self, text: str) -> None:
        if not self.peer_id:  # renewals say it in the log
            self.register_error = text

    async def _login(self) -> None:
        reply = await self._register(self._setup_key)
        self.register_error = "registered; connecting to NATS"
        self.maps.offer(reply.netmap)

    async def _keep_renewed(self) -> None:
        async def renew(deadline: float) -> float | None:
            reply = await self._register("", deadline)
            self.maps.offer(reply.netmap)  # a fresh snapshot; applied only if newer
            return self._expires_at

        reason = await keep_renewed(
            renew,
            self._expires_at,
            log=self.log,
            count=lambda outcome: self.m.renewals.labels(outcome=outcome).inc(),
        )
        self.log.error("bus identity lost; stopping", extra={"reason": reason})
        sys.stderr.write(f"meshssh-agent: {reason}\n")
        self.exit_code = 1
        self._lost.set()

    def _map_changed(self, _old: NetworkMap | None, netmap: NetworkMap | None) -> None:
        self._map_applied = time.monotonic()
        self.m.map_serial.set(self.maps.serial)
        self._tokens.follow(netmap.peer.jwt if netmap else None)
        self.children.evaluate(self.maps.ssh_enabled)
        for listener in self.map_listeners:
            self.tasks.spawn(self._run_listener(listener, netmap), "map-listener")

    async def _run_listener(self, listener: MapListener, netmap: NetworkMap | None) -> None:
        try:
            await listener(netmap, self.settings)
        except Exception:
            self.log.exception("map listener failed", extra={"listener": repr(listener)})

    def _child_changed(self) -> None:
        self.presence.poke()

    async def reconfigure(self, flags: PeerFlags) -> int:
        """Apply new local flags: report them as metadata, restart what they affect.

        Returns:
            The serial management reported for the peer's map after the change.
        """
        old = self.settings
        self.settings = old.with_flags(flags)
        self._tokens.ttl = float(max(0, flags.jwt_cache_ttl))
        serial = 0
        if self.nc is not None and self.registered and self.host_key is not None:
            update = MetaUpdate(
                peer_id=self.peer_id,
                credential=self.credential,
                meta=self.settings.meta(),
                ssh_host_key=self.host_key.public_line,
            )
            reply = await request(self.nc, subjects.POLICY_META, update, MetaReply)
            serial = reply.serial
        self.children.flags_changed(old, self.settings)
        self.log.info("flags changed", extra={"flags": repr(flags), "serial": serial})
        return serial

    def status(self, *, detail: bool) -> AgentStatus:
        """The agent's state; ``detail`` adds children, peers and sessions."""
        s, children, netmap = self.settings, self.children, self.maps.current
        peers: tuple[PeerStatus, ...] = ()
        if detail and netmap is not None:
            peers = tuple(
                PeerStatus(
                    id=p.id,
                    name=p.name,
                    mesh_ip=p.mesh_ip,
                    ssh_enabled=p.ssh_enabled,
                    online=None,  # peers do not hear each other: the map cannot say
                    host_key=p.ssh_host_key,
                )
                for p in netmap.remote_peers
            )
        return AgentStatus(
            pid=os.getpid(),
            version=VERSION,
            state_dir=str(s.state_dir),
            name=s.name,
            mesh_ip=s.mesh_ip,
            management_url=s.management_url,
            nats_url=s.nats_url,
            nats_connected=bool(self.nc is not None and self.nc.is_connected),
            registered=self.registered,
            register_error=self.register_error,
            peer_id=self.peer_id,
            serial=self.maps.serial,
            flags=s.flags,
            ssh_enabled=self.maps.ssh_enabled,
            ssh_running=children.sshd.state == "running",
            ssh_port=s.ssh_port,
            relay_mode=children.relay_mode.mode,
            relay_mode_reason=children.relay_mode.reason,
            relay_port=s.relay_port,
            relay_running=children.relay.state == "running",
            native_upstream=s.native_upstream or "",
            ops_url=self.ops_url,
            children=(children.sshd.status(), children.relay.status()),
            peers=peers,
            sessions=self.presence.sessions if detail else (),
        )
