"""Fixtures for policy tests: real policy replicas (in-process, real NATS with auth on, real
HTTP) and helpers to register peers (REST, as agents do) and watch their map keys.

Replicas connect as the policy identity and hold the server's bus keys (``--bus-keys``), so
they mint peers' NATS JWTs and push revocations to the test's own nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.connection import connect_nats
from meshssh_common.errors import error_for_code
from meshssh_common.kv import KvEvent, TypedKV, open_bucket
from meshssh_common.map_chain import MAP_DOC
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.nats_jwt import Key, Prefix, new_key
from meshssh_common.service import run_service
from meshssh_common.signed_doc import Signer, Verifier
from meshssh_common.wire import (
    NetworkMap,
    PeerFlags,
    PeerMeta,
    RegisterReply,
    RegisterRequest,
)
from meshssh_policy.server import serve
from meshssh_policy.settings import PolicySettings
from meshssh_testkit import NatsServer
from meshssh_testkit.dashboard import add_user, start_dashboard_authn
from meshssh_testkit.netmaps import MapAssembler
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.ports import free_port

TOKEN = "test-admin-token-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


class _UrlCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.urls: dict[str, str] = {}
        self.found = asyncio.Event()

        self.ops: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "ops listening":
            self.ops[getattr(record, "instance", "")] = getattr(record, "url", "")
        if record.getMessage() == "api listening":
            self.urls[getattr(record, "instance", "")] = getattr(record, "url", "")
            self.found.set()


@dataclass
class Replica:
    """One policy replica running in this process."""

    instance: str
    url: str
    metrics: ServiceMetrics
    task: asyncio.Task[int]
    stop_event: asyncio.Event
    ops_url: str = ""

    def client(self, token: str | None = TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    async def stop(self) -> int:
        self.stop_event.set()
        async with asyncio.timeout(15):
            return await self.task


@dataclass
class PolicyFactory:
    nats: NatsServer
    catcher: _UrlCatcher
    bus_keys: Path | None = None  # --bus-keys of every replica (a test may override it)
    started: list[Replica] = field(default_factory=list)
    _turn: int = 0

    def live(self) -> Replica:
        """A running replica, taking turns (as NATS's queue group spread requests)."""
        running = [r for r in self.started if not r.task.done()]
        assert running, "no policy replica is running"
        self._turn += 1
        return running[self._turn % len(running)]

    async def start(self, instance: str = "r1", **overrides: Any) -> Replica:
        settings = PolicySettings(
            **{
                "nats_url": self.nats.url,
                "nats_creds": self.nats.creds("policy"),
                "bus_keys": self.bus_keys,
                "listen": "127.0.0.1:0",
                "ops_listen": "127.0.0.1:0",
                "admin_token": TOKEN,
                "mesh_prefix": "127.0.0.0/8",
                "instance": instance,
                "shutdown_grace": 5.0,
                **overrides,
            }
        )
        metrics = ServiceMetrics("policy")
        stop = asyncio.Event()
        self.catcher.urls.pop(instance, None)
        task = asyncio.create_task(
            run_service("policy", settings, serve, metrics=metrics, stop=stop)
        )
        async with asyncio.timeout(20):
            while instance not in self.catcher.urls:
                if task.done():
                    raise RuntimeError(f"policy replica {instance} exited {task.result()}")
                self.catcher.found.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self.catcher.found.wait()
        replica = Replica(
            instance,
            self.catcher.urls[instance],
            metrics,
            task,
            stop,
            self.catcher.ops.get(instance, ""),
        )
        self.started.append(replica)
        return replica


@pytest.fixture
async def policy(nats_server: NatsServer) -> AsyncIterator[PolicyFactory]:
    """Starts policy replicas on the test's nats-server; stops them after the test."""
    logger = logging.getLogger("meshssh.policy")
    catcher = _UrlCatcher()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(catcher)
    keys = nats_server.keys
    factory = PolicyFactory(nats_server, catcher, keys.dir if keys is not None else None)
    try:
        yield factory
    finally:
        for replica in factory.started:
            if not replica.task.done():
                await replica.stop()
        logger.removeHandler(catcher)
        logger.setLevel(old_level)


async def connect_as(server: NatsServer, creds: Path) -> NATS:
    """A client of ``creds`` through meshssh's own ``connect_nats`` (a refusal: ConfigError)."""
    return await connect_nats(
        server.url, name="test", creds=creds, ca=server.ca, retry_initial=False
    )


Register = Callable[..., Any]


async def register_rest(
    replica: Replica,
    name: str,
    mesh_ip: str,
    key: str = "",
    *,
    version: str = "0.1.0",
    server: bool = True,
    native: bool = True,
    peer_id: str = "",
    credential: str = "",
    host_key: str = HOST_KEY,
    nats_key: Key | str | None = None,
    ssh_port: int = 0,
    relay_port: int = 0,
) -> RegisterReply:
    """``POST /api/v1/peers/register`` as an agent sends it; a refusal raises its MeshError.

    ``nats_key``: the peer's NATS key (None: a fresh one).
    """
    meta = PeerMeta(
        version=version,
        capabilities=("native_ssh",) if native else (),
        flags=PeerFlags(server_ssh_allowed=server),
        ssh_port=ssh_port,
        relay_port=relay_port,
    )
    if nats_key is None:
        nats_key = new_key(Prefix.USER)
    req = RegisterRequest(
        name=name,
        mesh_ip=mesh_ip,
        meta=meta,
        setup_key=key,
        peer_id=peer_id,
        credential=credential,
        ssh_host_key=host_key,
        nats_key=nats_key.public if isinstance(nats_key, Key) else nats_key,
    )
    async with httpx.AsyncClient(base_url=replica.url, timeout=15) as http:
        r = await http.post(
            "/api/v1/peers/register",
            content=codec.encode(req),
            headers={"Content-Type": "application/json"},
        )
    if r.status_code != 200:
        body = r.json()
        raise error_for_code(body["code"], body["error"])
    return codec.decode(r.content, RegisterReply)


@pytest.fixture
def register(policy: PolicyFactory) -> Register:
    """``await register(name, ip, key=..., version=..., server=True)`` -> RegisterReply."""

    async def do(*args: Any, **kw: Any) -> RegisterReply:
        return await register_rest(policy.live(), *args, **kw)

    return do


@dataclass
class MapWatch:
    """Every netmap KV event since the watch started (initial values included)."""

    events: list[KvEvent[NetworkMap]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, peer_id: str) -> list[NetworkMap]:
        key = subjects.netmap_key(peer_id)
        return [e.value for e in self.events if e.key == key and e.value is not None]

    def latest(self, peer_id: str) -> NetworkMap | None:
        maps = self.of(peer_id)
        return maps[-1] if maps else None

    def keys_after(self, mark: int) -> list[str]:
        return [e.key for e in self.events[mark:] if not e.initial_done]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)


def bus_map_signer(nats_server: NatsServer) -> Signer:
    """The map signer of the server's bus directory (the one policy signs with)."""
    assert nats_server.keys is not None
    return Signer.load(nats_server.keys.dir / "map-signing.pem", kind="map")


def bus_jwks_signer(nats_server: NatsServer) -> Signer:
    """The JWKS signer of the server's bus directory (authn's key; policy pins it)."""
    assert nats_server.keys is not None
    return Signer.load(nats_server.keys.dir / "jwks-signing.pem", kind="jwks")


@pytest.fixture
async def map_watch(nc: NATS, nats_server: NatsServer) -> AsyncIterator[MapWatch]:
    """A watch on every peer's map key (``peer.*`` of ``meshssh-netmaps``), verified as a peer
    does, with the pins of the bus directory's map signing key."""
    kv = TypedKV(
        await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS),
        MAP_DOC,
        verifier=Verifier("map", bus_map_signer(nats_server).pins),
    )
    watch = MapWatch()
    maps = MapAssembler()

    async def run() -> None:
        async for ev in kv.watch(">"):
            netmap = maps.feed(ev.key, ev.value)
            if ev.key.startswith("snap.") and not ev.initial_done:
                continue
            async with watch.changed:
                watch.events.append(KvEvent(ev.key, netmap, ev.revision, ev.initial_done))
                watch.changed.notify_all()
            if ev.initial_done:
                watch.ready.set()

    task = asyncio.create_task(run())
    try:
        async with asyncio.timeout(5):
            await watch.ready.wait()
        yield watch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (every 20 ms) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def poll() -> Callable[..., Any]:
    """``await poll(lambda: ...)``: wait (bounded) for a condition."""
    return until


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    """The demo seed shipped with policy (used by ``make run``)."""
    return Path(__file__).resolve().parents[1] / "demo" / "seed.json"


SERVER_KEY = "meshssh-demo-server-key-0001"


@dataclass
class Site:
    """authn (embedded provider) and a policy replica whose dashboard signs users in there."""

    base: str
    replica: Replica
    peer: str


SiteStarter = Callable[..., Awaitable[Site]]


@pytest.fixture
def start_site(
    policy: PolicyFactory,
    seed_file: Path,
    register: Register,
    services: ServiceFactory,
    nats_server: NatsServer,
    tmp_path: Path,
) -> SiteStarter:
    """``await start_site(public_url="", **settings)``: authn with alice, bob and carol
    (``<name>-password-0123``; alice and bob in the group users, carol's token says ops), a
    policy replica (demo seed; alice an admin unless ``settings`` say otherwise), and one
    registered peer ``srv``."""

    async def start(public_url: str = "", **settings: Any) -> Site:
        users = tmp_path / "users.json"
        await add_user(users, "alice", "alice-password-0123", groups=("users",))
        await add_user(users, "bob", "bob-password-0123")
        await add_user(users, "carol", "carol-password-0123", groups=("ops",))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        await start_dashboard_authn(services, nats_server, users, public_url or base)
        settings = settings or {"admin_users": ("alice",)}
        replica = await policy.start(
            seed=seed_file, listen=f"127.0.0.1:{port}", public_url=public_url, **settings
        )
        peer = (await register("srv", "127.0.0.9", SERVER_KEY)).peer_id
        async with replica.client() as api, asyncio.timeout(30):
            while (await api.get("/api/v1/auth/config")).status_code != 200:
                await asyncio.sleep(0.05)  # until authn has published its issuer
        return Site(base, replica, peer)

    return start


@pytest.fixture
async def site(start_site: SiteStarter) -> Site:
    """The dashboard site with its default settings (alice the admin)."""
    return await start_site()
