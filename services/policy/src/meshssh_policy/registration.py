"""Peer registration (REST) and metadata updates (NATS) (SPEC §4, §5).

``POST /api/v1/peers/register``: a new peer presents a setup key; a known peer presents
its id and the credential it was given the first time (only a hash is stored). Either way it
sends its metadata, host key, mesh address, name and NATS user public key (``nats_key``), and
gets back its id, its credential, its current network map and a NATS user JWT for that key
(``--peer-creds-ttl``; the same call with the credential is the renewal). A returning peer
that presents another key has its old key revoked (:mod:`meshssh_policy.bus_revocations`).
Refusals, each counted by reason:

- setup key unknown, revoked, expired or used up (the use count is raised with
  compare-and-set, so a key with a limit of N admits exactly N peers, even under races);
- peer id unknown or credential wrong;
- mesh address unparsable, outside ``--mesh-prefix``, or held by another peer;
- host key not an OpenSSH public key line;
- ``nats_key`` not a NATS user public key (400), or no ``--bus-keys`` to sign with (503).

A name already used by another peer gets the first free ``-N`` suffix; the map says which.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import time

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from meshssh_common import subjects
from meshssh_common.bus_keys import BusKeys
from meshssh_common.bus_permissions import gateway_permissions, inbox_prefix, peer_permissions
from meshssh_common.errors import BadRequest, Denied, MeshError, Unavailable
from meshssh_common.logs import BoundLogger
from meshssh_common.nats_jwt import decode_claims
from meshssh_common.wire import (
    MetaReply,
    MetaUpdate,
    NetworkMap,
    Pins,
    RegisterReply,
    RegisterRequest,
)
from meshssh_policy.bus_revocations import BusRevocations, check_user_key
from meshssh_policy.claims import Claims
from meshssh_policy.engine import Engine
from meshssh_policy.memberships import add_member
from meshssh_policy.metrics import PolicyMetrics, RejectReason
from meshssh_policy.records import (
    PeerRecord,
    SetupKeyRecord,
    ip_key,
    name_key,
    peer_key,
    secret_hash,
    setup_key_id,
    setup_key_key,
)
from meshssh_policy.settings import MAX_PEER_CREDS_TTL, PEER_CREDS_TTL
from meshssh_policy.store import Store

__all__ = ["Registrar", "check_mesh_ip", "normalize_host_key"]

_MAX_HOST_KEY = 8192
_MAP_POLLS, _MAP_POLL_EVERY = 100, 0.05


class Rejected(Denied):
    """A refused registration; ``why`` is the metric label."""

    def __init__(self, why: RejectReason, reason: str, public: str) -> None:
        super().__init__(reason, public=public)
        self.why = why


class _BadNatsKey(BadRequest):
    """``nats_key`` is not a NATS user public key (its own metric label)."""


def normalize_host_key(line: str) -> str:
    """``"ssh-ed25519 AAAA... comment"`` → ``"ssh-ed25519 AAAA..."`` ("" stays "").

    Raises:
        BadRequest: not an OpenSSH public key line.
    """
    line = line.strip()
    if not line:
        return ""
    parts = line.split()
    try:
        if len(line) > _MAX_HOST_KEY or len(parts) < 2:
            raise ValueError("expected '<type> <base64>'")
        serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise BadRequest(f"ssh_host_key is not an OpenSSH public key: {e}") from e
    return f"{parts[0]} {parts[1]}"


def check_mesh_ip(mesh_ip: str, prefix: str) -> str:
    """The canonical form of ``mesh_ip`` if it may be a peer's address in ``prefix``.

    Raises:
        BadRequest: unparsable, outside the prefix, or the prefix's network/broadcast address.
    """
    network = ipaddress.ip_network(prefix)
    try:
        addr = ipaddress.ip_address(mesh_ip)
    except ValueError as e:
        raise BadRequest(f"mesh address {mesh_ip!r} is not an IP address") from e
    if addr not in network:
        raise BadRequest(f"mesh address {addr} is outside the mesh prefix {network}")
    if network.num_addresses > 2 and addr in (network.network_address, network.broadcast_address):
        raise BadRequest(f"mesh address {addr} is the network or broadcast address of {network}")
    return str(addr)


class Registrar:
    """Serves register and meta requests for one replica."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        mesh_prefix: str,
        metrics: PolicyMetrics,
        log: BoundLogger,
        bus: BusKeys | None = None,
        revocations: BusRevocations | None = None,
        creds_ttl: float = PEER_CREDS_TTL,
    ) -> None:
        self.store = store
        self.engine = engine
        self.claims = Claims(store)
        self.mesh_prefix = mesh_prefix
        self.metrics = metrics
        self.log = log
        self.bus = bus
        self.revocations = revocations
        self.creds_ttl = creds_ttl

    async def register(self, req: RegisterRequest) -> RegisterReply:
        """Handle one registration or renewal; raises a :class:`MeshError` to refuse.

        Raises:
            BadRequest: a malformed field. Denied: a refused key or credential.
            Unavailable: no ``--bus-keys``, or the state did not answer.
        """
        try:
            bus = self._bus()
            nats_key = self._nats_key(req.nats_key)
            host_key = self._host_key(req.ssh_host_key)
            mesh_ip = self._mesh_ip(req.mesh_ip)
            if req.peer_id or req.credential:
                peer, credential = await self._returning(req, mesh_ip, host_key, nats_key)
                kind = "returning"
            elif req.setup_key:
                peer, credential = await self._new(req, mesh_ip, host_key, nats_key)
                kind = "new"
            else:
                raise BadRequest("a setup key, or a peer id and credential, is required")
            jwt, expires_at = await self._mint(bus, peer, credential)
        except Rejected as e:
            self.metrics.rejected.labels(reason=e.why.value).inc()
            raise
        except _BadNatsKey:
            self.metrics.rejected.labels(reason=RejectReason.BAD_NATS_KEY.value).inc()
            raise
        except BadRequest:
            self.metrics.rejected.labels(reason=RejectReason.BAD_REQUEST.value).inc()
            raise
        self.metrics.registrations.labels(kind=kind).inc()
        self.log.info(
            "peer registered",
            extra={"peer": peer.id, "peer_name": peer.name, "mesh_ip": peer.mesh_ip, "kind": kind},
        )
        return RegisterReply(
            peer_id=peer.id,
            credential=credential,
            netmap=await self._map_after_write(peer.id),
            nats_jwt=jwt,
            nats_expires_at=expires_at,
            pins=Pins(map=self.store.map_signer.pins, jwks=self.store.jwks_pins),
        )

    async def meta(self, req: MetaUpdate) -> MetaReply:
        """Handle a metadata update from a registered peer."""
        try:
            host_key = self._host_key(req.ssh_host_key) if req.ssh_host_key else None

            def change(peer: PeerRecord | None) -> PeerRecord:
                self._verify(peer, req.credential, req.peer_id)
                assert peer is not None
                return msgspec.structs.replace(
                    peer, meta=req.meta, ssh_host_key=host_key or peer.ssh_host_key
                )

            await self.store.mutate(self.store.peers, peer_key(req.peer_id), change)
        except Rejected as e:
            self.metrics.rejected.labels(reason=e.why.value).inc()
            raise
        self.metrics.meta_updates.inc()
        netmap = await self._map_after_write(req.peer_id)
        return MetaReply(serial=netmap.serial)

    # -- steps ---------------------------------------------------------------------------

    def _bus(self) -> BusKeys:
        if self.bus is None:
            self.metrics.rejected.labels(reason=RejectReason.NO_BUS_KEYS.value).inc()
            raise Unavailable(
                "this policy cannot issue NATS credentials to peers: it was started without "
                "--bus-keys (the directory of meshssh-policy init)"
            )
        return self.bus

    @staticmethod
    def _nats_key(key: str) -> str:
        try:
            return check_user_key(key)
        except BadRequest as e:
            raise _BadNatsKey(f"nats_key: {e}") from e

    async def _mint(self, bus: BusKeys, peer: PeerRecord, credential: str) -> tuple[str, float]:
        """A user JWT for the peer's key, handed out only if the peer is still there with it.

        A removal that lands between the record write and the signature revokes the key at a
        time this JWT may postdate: reading the record again after signing closes that gap.
        """
        perms = gateway_permissions if peer.kind == "gateway" else peer_permissions
        jwt = bus.mint(
            peer.nats_key,
            name=f"peer-{peer.id}",
            permissions=perms(peer.id, inbox_prefix(peer.nats_key)),
            ttl=self.creds_ttl,
        )
        entry = await self.store.peers.get(peer_key(peer.id))
        now = entry.value if entry is not None else None
        self._verify(now, credential, peer.id)
        assert now is not None
        if now.nats_key != peer.nats_key:
            raise Rejected(
                RejectReason.BAD_CREDENTIAL,
                f"peer {peer.id!r} changed its NATS key while registering",
                "the peer registered again at the same time; try again",
            )
        self.metrics.peer_creds.inc()
        return jwt, float(decode_claims(jwt)["exp"])

    async def _revoke_replaced(self, old: str, new: str) -> None:
        """Revoke the key a returning peer no longer uses (its JWTs expire within the TTL cap)."""
        if old and old != new and self.revocations is not None:
            await self.revocations.revoke(old, until=time.time() + MAX_PEER_CREDS_TTL + 60)

    def _host_key(self, line: str) -> str:
        try:
            return normalize_host_key(line)
        except BadRequest as e:
            raise Rejected(RejectReason.BAD_HOST_KEY, str(e), str(e)) from e

    def _mesh_ip(self, mesh_ip: str) -> str:
        try:
            return check_mesh_ip(mesh_ip, self.mesh_prefix)
        except BadRequest as e:
            why = RejectReason.OUTSIDE_PREFIX if "outside" in str(e) else RejectReason.BAD_ADDRESS
            raise Rejected(why, str(e), str(e)) from e

    @staticmethod
    def _verify(peer: PeerRecord | None, credential: str, peer_id: str) -> None:
        if peer is None or not hmac.compare_digest(peer.credential_hash, secret_hash(credential)):
            raise Rejected(
                RejectReason.BAD_CREDENTIAL,
                f"peer {peer_id!r}: unknown peer or wrong credential",
                "peer credential not accepted; register again with a setup key",
            )

    async def _take_address(self, mesh_ip: str, peer_id: str) -> None:
        if not await self.claims.take_address(mesh_ip, peer_id):
            text = f"mesh address {mesh_ip} is already used by another peer"
            raise Rejected(RejectReason.ADDRESS_TAKEN, text, text)

    async def _returning(
        self, req: RegisterRequest, mesh_ip: str, host_key: str, nats_key: str
    ) -> tuple[PeerRecord, str]:
        entry = await self.store.peers.get(peer_key(req.peer_id)) if req.peer_id else None
        current = entry.value if entry is not None else None
        self._verify(current, req.credential, req.peer_id)
        assert current is not None
        if mesh_ip != current.mesh_ip:
            await self._take_address(mesh_ip, current.id)
        name = current.name
        if req.name != current.name:
            name = await self.claims.take_name(req.name, current.id)

        def change(peer: PeerRecord | None) -> PeerRecord:
            self._verify(peer, req.credential, req.peer_id)
            assert peer is not None
            return msgspec.structs.replace(
                peer,
                name=name,
                mesh_ip=mesh_ip,
                meta=req.meta,
                ssh_host_key=host_key or peer.ssh_host_key,
                last_login=time.time(),
                nats_key=nats_key,
            )

        # Before the record moves to the new key: should the write fail, the old key is gone
        # anyway (fail closed), and a retry finds nothing left to revoke.
        await self._revoke_replaced(current.nats_key, nats_key)
        peer = await self.store.mutate(self.store.peers, peer_key(current.id), change)
        assert peer is not None
        if mesh_ip != current.mesh_ip:
            await self.claims.release(ip_key(current.mesh_ip), current.id)
        if name != current.name:
            await self.claims.release(name_key(current.name), current.id)
        return peer, req.credential

    async def _new(
        self, req: RegisterRequest, mesh_ip: str, host_key: str, nats_key: str
    ) -> tuple[PeerRecord, str]:
        key_id = setup_key_id(req.setup_key)
        known = self.store.state.setup_keys.get(key_id)
        if known is None and await self.store.setup_keys.get(setup_key_key(key_id)) is None:
            raise Rejected(
                RejectReason.BAD_KEY, f"unknown setup key {key_id}", "setup key not recognised"
            )
        peer_id = secrets.token_hex(6)
        await self._take_address(mesh_ip, peer_id)
        try:
            key = await self._use_key(key_id, req.setup_key)
            name = await self.claims.take_name(req.name, peer_id)
        except MeshError:
            await self.claims.release(ip_key(mesh_ip), peer_id)
            raise
        credential = secrets.token_urlsafe(32)
        now = time.time()
        peer = PeerRecord(
            id=peer_id,
            name=name,
            mesh_ip=mesh_ip,
            meta=req.meta,
            credential_hash=secret_hash(credential),
            ssh_host_key=host_key,
            ssh_enabled=key.ssh_enabled,
            setup_key_id=key.id,
            created_at=now,
            last_login=now,
            nats_key=nats_key,
            kind=key.kind,
        )
        # Groups first: a member id without a peer record counts for nothing, so the peer's
        # first map (computed when its record appears) already has its groups' rules.
        for group in key.auto_groups:
            try:
                await add_member(self.store, group, peer=peer_id)
            except MeshError as e:
                self.log.warning(
                    "setup key names a group that cannot take the peer",
                    extra={"key": key.id, "group": group, "error": str(e)},
                )
        revision = await self.store.peers.create(peer_key(peer_id), peer)
        await self.store.state.wait_applied(subjects.BUCKET_PEERS, revision)
        return peer, credential

    async def _use_key(self, key_id: str, secret: str) -> SetupKeyRecord:
        def change(key: SetupKeyRecord | None) -> SetupKeyRecord:
            now = time.time()
            if key is None or not hmac.compare_digest(key.key_hash, secret_hash(secret)):
                raise Rejected(
                    RejectReason.BAD_KEY, f"unknown setup key {key_id}", "setup key not recognised"
                )
            if key.revoked:
                raise Rejected(
                    RejectReason.REVOKED_KEY, f"setup key {key_id} revoked", "setup key revoked"
                )
            if key.expires_at and now >= key.expires_at:
                raise Rejected(
                    RejectReason.EXPIRED_KEY, f"setup key {key_id} expired", "setup key expired"
                )
            if key.usage_limit and key.used >= key.usage_limit:
                raise Rejected(
                    RejectReason.EXHAUSTED_KEY,
                    f"setup key {key_id} used {key.used} of {key.usage_limit} times",
                    "setup key usage limit reached",
                )
            return msgspec.structs.replace(key, used=key.used + 1, last_used=now)

        key = await self.store.mutate(self.store.setup_keys, setup_key_key(key_id), change)
        assert key is not None
        return key

    async def _map_after_write(self, peer_id: str) -> NetworkMap:
        """The peer's map once this replica has processed the write (KV holds the truth).

        With several replicas another one may be the one that publishes: wait for it a bit.
        """
        await self.engine.wait_processed(dict(self.store.state.view))
        for _ in range(_MAP_POLLS):
            netmap = await self.engine.publisher.current(peer_id)
            if netmap is not None:
                return netmap
            await asyncio.sleep(_MAP_POLL_EVERY)
        raise Unavailable(f"no network map for peer {peer_id} yet; try again")
