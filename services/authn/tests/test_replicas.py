"""Two authn replicas, active-active: one is SIGKILLed during logins, the other carries on.

Real ``meshssh-authn`` processes on a 3-node NATS cluster (every bucket R3), sharing the
signing keys and device grants through KV, behind one public URL (a loopback TCP balancer
that skips a dead backend, as a Kubernetes Service does). SSH servers' browser checks go
over NATS (device-start and device-poll, served in the ``authn`` queue group); the user
approves in the browser through the public URL. A replica killed between a login's start
and its approval loses nothing: the other approves, answers the poll and signs a token every
server accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.peer_tokens import PeerTokenValidator
from meshssh_common.rpc import request
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
)
from meshssh_testkit import ServiceProcess
from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.ports import free_port
from meshssh_testkit.scrape import read_metric

from .conftest import Browser, Kv

LOGINS = 8
KILL_AFTER = 3  # the 4th login is started, then its replica may die before the approval


class Balancer:
    """A TCP front for several backends: each connection goes to the first that accepts."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def login(
    nc: NATS,
    browser: Browser,
    password: str,
    before_approval: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """One browser check as an SSH server runs it; returns the token."""
    started = await request(
        nc,
        subjects.device_start("server-1"),
        DeviceStartRequest(peer_id="server-1"),
        DeviceStartReply,
    )
    if before_approval is not None:
        await before_approval()
    page = await browser.sign_in(started.verification_uri, started.user_code, "alice", password)
    assert page.status_code == 200, page.text
    poll = DevicePollRequest(device_code=started.device_code)
    async with asyncio.timeout(20):
        while (
            done := await request(nc, subjects.device_poll("server-1"), poll, DevicePollReply)
        ).status == "pending":
            await asyncio.sleep(0.1)
    assert done.status == "ok", done
    return done.token


async def test_logins_go_on_through_the_other_replica_when_one_is_killed(
    nats_cluster: NatsCluster,
    users_file: Path,
    passwords: dict[str, str],
    browser: Browser,
) -> None:
    ports = [free_port("127.0.0.1") for _ in range(2)]
    front = Balancer(ports)
    await front.start()
    replicas: list[ServiceProcess] = []
    nats_server = nats_cluster
    nc = await nats_server.connect(nats_server.peer_creds("server-1"))  # as an SSH server
    kv = Kv(await nats_server.connect(), nats_server.nodes[0].jwks_signing_key())
    try:
        for i, port in enumerate(ports):
            replicas.append(
                await ServiceProcess.start(
                    "meshssh-authn",
                    *nats_server.authn_flags(),
                    *("--listen", f"127.0.0.1:{port}", "--instance", f"authn-{i}"),
                    *("--public-url", f"http://127.0.0.1:{front.port}"),
                    *("--users-file", str(users_file), "--device-poll-interval", "0"),
                )
            )
        for proc in replicas:
            await proc.wait_ready(timeout=30)
        await kv.wait_snapshot()
        victim, survivor = replicas

        async def kill() -> None:
            victim.proc.kill()
            await victim.proc.wait()

        tokens = []
        for i in range(LOGINS):
            if i == KILL_AFTER:
                served_before = await _started(survivor)
            hook = kill if i == KILL_AFTER else None
            tokens.append(await login(nc, browser, passwords["alice"], before_approval=hook))
        # the logins started after the kill all went to the survivor (the one started just
        # before it may have gone to either)
        assert await _started(survivor) - served_before in (
            LOGINS - KILL_AFTER - 1,
            LOGINS - KILL_AFTER,
        )
        snap = await kv.wait_snapshot()  # a follower's direct get may lag: read until there
        # the browser check hands out per-peer tokens for the server that started it
        validator = PeerTokenValidator(snap.jwt, snap, peer_id="server-1")
        assert {validator.validate(t).token.user_id for t in tokens} == {"alice"}
        assert len(set(tokens)) == LOGINS
    finally:
        await nc.close()
        await kv.nc.close()
        for proc in replicas:
            await proc.stop()
        await front.stop()


async def _started(proc: ServiceProcess) -> float:
    sample = 'meshssh_authn_device_flows_total{outcome="started"}'
    return await read_metric(proc.ops_url, sample) or 0.0
