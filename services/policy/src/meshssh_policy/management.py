"""Everything one policy replica runs, wired together (built once in ``serve``).

Example::

    mgmt = await Management.open(ctx.nc, settings, metrics, log)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(mgmt.engine.run())
        tg.create_task(mgmt.logins.run())
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshssh_common.bus_keys import JWKS_PUB, BusKeys, read_jwks_pins
from meshssh_common.errors import ConfigError, NotFound
from meshssh_common.fingerprint import fingerprint
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.secret_files import write_secret_file
from meshssh_common.signed_doc import Signer
from meshssh_policy.admin_audit import AdminAudit
from meshssh_policy.bus_revocations import BusRevocations
from meshssh_policy.compiler import Compiler
from meshssh_policy.engine import Engine
from meshssh_policy.gateway_tickets import GatewayTickets
from meshssh_policy.logins import Logins
from meshssh_policy.memberships import add_member, remove_member
from meshssh_policy.metrics import PolicyMetrics
from meshssh_policy.peers import PeerOps, live_session
from meshssh_policy.presence import Presence
from meshssh_policy.publisher import Publisher
from meshssh_policy.records import GroupRecord, PeerRecord
from meshssh_policy.registration import Registrar
from meshssh_policy.resources import Resources
from meshssh_policy.settings import MAX_PEER_CREDS_TTL, PolicySettings
from meshssh_policy.state import State
from meshssh_policy.store import Store, bad_value_reporter, open_store

__all__ = ["Management"]


@dataclass
class Management:
    """The state, its store, the map engine, presence and the operations on top."""

    settings: PolicySettings
    admin_token: str
    state: State
    store: Store
    engine: Engine
    presence: Presence
    resources: Resources
    peer_ops: PeerOps
    registrar: Registrar
    logins: Logins
    metrics: PolicyMetrics
    log: BoundLogger
    js: JetStreamContext
    audit: AdminAudit
    bus: BusKeys | None  # None: no --bus-keys (peers cannot register)
    revocations: BusRevocations | None
    tickets: GatewayTickets  # browser terminal tickets (issue 20)

    @classmethod
    async def open(
        cls, nc: NATS, settings: PolicySettings, base: ServiceMetrics, log: BoundLogger
    ) -> Management:
        """Open the buckets and build every part (nothing runs yet)."""
        metrics = PolicyMetrics(base)
        state = State()
        token = await asyncio.to_thread(_admin_token, settings, log)
        js = nc.jetstream(timeout=settings.nats_request_timeout)
        bus = await asyncio.to_thread(_bus_keys, settings)
        map_signer, jwks_pins = await asyncio.to_thread(_doc_keys, settings)
        store = await open_store(
            js,
            state,
            bad_value_reporter(metrics.bad_state, log, base.signed_doc_refused),
            map_signer=map_signer,
            jwks_pins=jwks_pins,
        )
        publisher = Publisher(store.netmaps, metrics, log)
        engine = Engine(
            state,
            store.watched(),
            publisher,
            mesh_prefix=settings.mesh_prefix,
            concurrency=settings.publish_concurrency,
            metrics=metrics,
            log=log,
            nc=nc,
        )
        presence = Presence(settings.peer_offline_timeout, metrics=metrics, base=base, log=log)
        revocations = None
        if bus is not None:
            revocations = await BusRevocations.open(
                js,
                nc,
                bus,
                nats_url=settings.nats_url,
                ca=settings.nats_ca,
                timeout=settings.nats_request_timeout,
                metrics=metrics,
                log=log,
            )
            engine.on_removed = _revoke_removed(revocations)
        else:
            log.warning("no --bus-keys: peers cannot register (no NATS credentials can be issued)")
        registrar = Registrar(
            store,
            engine,
            mesh_prefix=settings.mesh_prefix,
            metrics=metrics,
            log=log,
            bus=bus,
            revocations=revocations,
            creds_ttl=settings.peer_creds_ttl,
        )
        return cls(
            settings=settings,
            admin_token=token,
            state=state,
            store=store,
            engine=engine,
            presence=presence,
            resources=Resources(store),
            peer_ops=PeerOps(store, revocations),
            registrar=registrar,
            logins=Logins(js, store, metrics, base, log),
            metrics=metrics,
            log=log,
            js=js,
            audit=AdminAudit(js, base, log),
            bus=bus,
            revocations=revocations,
            tickets=await GatewayTickets.open(js, state, metrics, log),
        )

    def compiler(self) -> Compiler:
        """A compiler over the current state (for views: SSH state, groups of a peer)."""
        return Compiler(self.state, self.engine.index, self.settings.mesh_prefix)

    async def end_session(self, peer_id: str, session_id: str) -> PeerRecord:
        """End a session the peer reports live (REST, meshctl and the dashboard).

        Raises:
            NotFound: no such peer, or its last heartbeat lists no such session.
        """
        self.peer_ops.get(peer_id)
        if not live_session(self.presence, peer_id, session_id):
            raise NotFound(f"session {session_id[:80]!r} is not live on peer {peer_id!r}")
        return await self.peer_ops.end_session(peer_id, session_id)

    async def add_to_group(
        self, group_id: str, *, peer: str | None = None, user: str | None = None
    ) -> GroupRecord:
        """Add a known peer or user to a group (idempotent; REST and the dashboard).

        Raises:
            NotFound: no such group, peer or user.
        """
        if peer is not None:
            self.peer_ops.get(peer)
        if user is not None and user not in self.state.users:
            raise NotFound(f"user {user!r} does not exist")
        return await add_member(self.store, group_id, peer=peer, user=user)

    async def remove_from_group(
        self, group_id: str, *, peer: str | None = None, user: str | None = None
    ) -> GroupRecord:
        """Remove a peer or user from a group (idempotent; REST and the dashboard).

        Raises:
            NotFound: no such group.
        """
        return await remove_member(self.store, group_id, peer=peer, user=user)


def _bus_keys(settings: PolicySettings) -> BusKeys | None:
    """The signing keys of ``--bus-keys`` (None when unset).

    Raises:
        ConfigError: the directory lacks a file or holds a malformed one.
    """
    if settings.bus_keys is None:
        return None
    try:
        keys = BusKeys.load(settings.bus_keys)
        keys.creds("system").read_text()
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError("--bus-keys", f"cannot load the bus keys: {e}") from e
    return keys


def _doc_keys(settings: PolicySettings) -> tuple[Signer, tuple[str, ...]]:
    """The map signer and the JWKS pins, from the ``--bus-keys`` directory.

    Policy never writes an unsigned map, so without them it does not start (fail closed).

    Raises:
        ConfigError: no ``--bus-keys``, or it lacks ``map-signing.pem``/``jwks-signing.pub``.
    """
    if settings.bus_keys is None:
        raise ConfigError(
            "--bus-keys",
            "required: policy signs every network map with <bus-keys>/map-signing.pem "
            "(make the directory with `meshssh-policy init --dir DIR`)",
        )
    directory = settings.bus_keys
    path = directory / "map-signing.pem"
    if not path.exists():
        raise ConfigError(
            "--bus-keys",
            f"{path} is missing (a bus directory made before signed maps): run "
            f"`meshssh-policy init --dir {directory} --rotate map-signing --rotate jwks-signing`",
        )
    return Signer.load(path, kind="map"), read_jwks_pins(directory / JWKS_PUB)


def _revoke_removed(revocations: BusRevocations) -> Callable[[PeerRecord], None]:
    def revoke(peer: PeerRecord) -> None:
        if peer.nats_key:
            revocations.revoke_soon(peer.nats_key, until=time.time() + MAX_PEER_CREDS_TTL + 60)

    return revoke


def _admin_token(settings: PolicySettings, log: BoundLogger) -> str:
    """The configured admin token, or one generated into a 0600 file (logged: path, fingerprint).

    The token itself never reaches a log line: only ``fingerprint`` (a SHA-256 prefix).

    Raises:
        ConfigError: ``--admin-token-file`` exists but holds no usable token.
    """
    if settings.admin_token:
        return settings.admin_token
    path = settings.admin_token_file
    if path is not None and path.exists():
        token = path.read_text().strip()
        if len(token) < 16:
            raise ConfigError("--admin-token-file", f"{path} holds no token of 16+ characters")
        log.info(
            "admin token read from its file",
            extra={"path": str(path), "admin_token_sha256": fingerprint(token)},
        )
        return token
    token = secrets.token_urlsafe(32)
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="meshssh-policy-")) / "admin-token"  # 0700 dir
    write_secret_file(path, token + "\n")
    log.warning(
        "no admin token configured (MESHSSH_ADMIN_TOKEN); generated one for this run "
        "and wrote it to a file only its owner can read",
        extra={"path": str(path), "admin_token_sha256": fingerprint(token)},
    )
    return token
