"""The gateway as a mesh peer: registration, its bus identity, its signed map, renewals.

The gateway registers over policy's REST exactly as an agent does
(:func:`meshssh_common.registration.register`: the setup key the first time, the stored peer
credential after), with no SSH host key (it serves no SSH) and the capability
``browser_gateway``. The reply's NATS JWT for the gateway's own key becomes
``<state-dir>/nats.creds`` (:class:`~meshssh_common.bus_identity.BusIdentity`), which the
service runner connects with; its pins go to ``<state-dir>/pins.json``, with which the
gateway's own :class:`~meshssh_common.peer_map.PeerMap` verifies every map it reads from KV.
The map says which peers the gateway may reach, at which mesh address and sshd port, with
which pinned host key: :meth:`MeshPeer.target` is the only source of those (a ticket's
address is only checked against it). The JWT is renewed at half-life
(:func:`meshssh_common.renewal.keep_renewed`); the connection takes the new file up at once.

Order: :meth:`register` before NATS (no bus identity before it), then :meth:`follow` and
:meth:`keep_renewed` inside the service.

Example::

    peer = MeshPeer(settings, setup_key=key, log=log, metrics=m)
    await peer.register(http)
    tg.create_task(peer.follow(nc))
    remote = peer.target("demo-server-1a2b")   # RemotePeer | None
"""

from __future__ import annotations

import platform
import socket

import httpx
from nats.aio.client import Client as NATS

from meshssh_common.bus_identity import BusIdentity
from meshssh_common.errors import ConfigError, WireError
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.registration import PeerLogin, register
from meshssh_common.renewal import keep_renewed
from meshssh_common.signed_doc import PINS_FILE, write_pins
from meshssh_common.version import VERSION
from meshssh_common.wire import PeerMeta, RegisterReply, RemotePeer
from meshssh_gateway.metrics import GatewayMetrics
from meshssh_gateway.settings import GatewaySettings

__all__ = ["CAPABILITY", "MeshPeer"]

CAPABILITY = "browser_gateway"


class MeshPeer:
    """The gateway's peer identity and map (see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        setup_key: str,
        log: BoundLogger,
        metrics: ServiceMetrics,
        m: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.log = log
        self.m = m
        self._setup_key = setup_key
        self.identity = BusIdentity(settings.nats_seed, settings.nats_creds_file, log=log)
        self.maps = PeerMap(log=log, metrics=metrics, pins=settings.state_dir / PINS_FILE)
        self.peer_id = ""
        self.expires_at: float | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def login(self) -> PeerLogin:
        """What every registration of the gateway sends."""
        s = self.settings
        meta = PeerMeta(
            version=VERSION,
            capabilities=(CAPABILITY,),
            hostname=socket.gethostname()[:255],
            os=platform.system().lower(),
        )
        return PeerLogin(
            management_url=s.management_url,
            name=s.name,
            mesh_ip=s.mesh_ip,
            meta=meta,
            host_key="",
            credential_path=s.credential_path,
        )

    def prepare(self) -> None:
        """Create the state dir (0700).

        Raises:
            ConfigError: it cannot be created.
        """
        try:
            self.settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError(
                "--state-dir", f"cannot create {self.settings.state_dir}: {e.strerror}"
            ) from e

    async def register(self, http: httpx.AsyncClient, *, deadline: float | None = None) -> None:
        """Register (retrying while management does not answer) and store what it gave.

        Args:
            http: the client kept for every registration.
            deadline: give up at this ``time.time()`` (None: retry until cancelled).

        Raises:
            ConfigError: no management URL, or no credential and no setup key.
            MeshError: management refused (the setup key or credential).
            WireError: management issued no NATS credentials (the bus refuses anonymous
                connections, so the gateway could not work).
        """
        self._http = http
        reply = await register(
            http,
            self.login,
            self._setup_key if deadline is None else "",
            identity=self.identity,
            log=self.log,
            progress=lambda text: self.log.warning(text),
            deadline=deadline,
        )
        self._stored(reply)

    def _stored(self, reply: RegisterReply) -> None:
        if not reply.nats_jwt:
            raise WireError("management registered the gateway without NATS credentials")
        self.peer_id = reply.peer_id
        # The pins first: the map follower verifies every map from KV with them.
        write_pins(self.settings.state_dir / PINS_FILE, reply.pins)
        self.expires_at = self.identity.store(reply.nats_jwt)
        self.m.creds_expiry.set(self.expires_at or 0)
        self.maps.offer(reply.netmap)

    @property
    def creds_path(self) -> str:
        """The creds file the service connects with."""
        return str(self.identity.creds_path)

    async def follow(self, nc: NATS) -> None:
        """Follow the gateway's own map key until cancelled."""
        await self.maps.follow(nc, self.peer_id)

    async def keep_renewed(self) -> str:
        """Renew the NATS JWT at half-life until the identity is lost; returns why."""

        async def renew(deadline: float) -> float | None:
            assert self._http is not None
            await self.register(self._http, deadline=deadline)
            return self.expires_at

        return await keep_renewed(
            renew,
            self.expires_at,
            log=self.log,
            count=lambda outcome: self.m.renewals.labels(outcome=outcome).inc(),
        )

    def target(self, peer_id: str) -> RemotePeer | None:
        """The peer ``peer_id`` as the gateway's current map has it (None: not reachable)."""
        netmap = self.maps.current
        if netmap is None:
            return None
        return next((p for p in netmap.remote_peers if p.id == peer_id), None)
