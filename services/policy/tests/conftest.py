"""Fixtures for policy tests: real policy replicas (in-process, real NATS, real HTTP) and
helpers to register peers and watch their map keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import KvEvent, TypedKV, open_bucket
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.rpc import request
from meshssh_common.service import run_service
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

TOKEN = "test-admin-token-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


class _UrlCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.urls: dict[str, str] = {}
        self.found = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
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
    started: list[Replica] = field(default_factory=list)

    async def start(self, instance: str = "r1", **overrides: Any) -> Replica:
        settings = PolicySettings(
            **{
                "nats_url": self.nats.url,
                "nats_creds": self.nats.creds("policy"),
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
        replica = Replica(instance, self.catcher.urls[instance], metrics, task, stop)
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
    factory = PolicyFactory(nats_server, catcher)
    try:
        yield factory
    finally:
        for replica in factory.started:
            if not replica.task.done():
                await replica.stop()
        logger.removeHandler(catcher)
        logger.setLevel(old_level)


Register = Callable[..., Any]


@pytest.fixture
def register(nc: NATS) -> Register:
    """``await register(name, ip, key=..., version=..., server=True)`` -> RegisterReply."""

    async def do(
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
    ) -> RegisterReply:
        meta = PeerMeta(
            version=version,
            capabilities=("native_ssh",) if native else (),
            flags=PeerFlags(server_ssh_allowed=server),
        )
        req = RegisterRequest(
            name=name,
            mesh_ip=mesh_ip,
            meta=meta,
            setup_key=key,
            peer_id=peer_id,
            credential=credential,
            ssh_host_key=host_key,
        )
        return await request(nc, subjects.POLICY_REGISTER, req, RegisterReply, timeout=10)

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


@pytest.fixture
async def map_watch(nc: NATS) -> AsyncIterator[MapWatch]:
    """A watch on every peer's map key (``peer.*`` of ``meshssh-netmaps``)."""
    kv = TypedKV(await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS), NetworkMap)
    watch = MapWatch()

    async def run() -> None:
        async for ev in kv.watch(subjects.NETMAP_ALL):
            async with watch.changed:
                watch.events.append(ev)
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
