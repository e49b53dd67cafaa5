"""The meshssh pytest plugin: fixtures for a real nats-server, OpenSSH and service processes.

Registered through the ``pytest11`` entry point of meshssh-testkit, so every test in the
workspace has these fixtures:

- ``nats_server``: a fresh nats-server with JetStream and authentication on (store and bus keys
  in ``tmp_path``), stopped after; services get ``nats_server.flags("policy")`` (URL, creds,
  CA), peers ``nats_server.peer_creds(peer_id)``;
- ``nats_cluster``: a 3-node :class:`~meshssh_testkit.natscluster.NatsCluster` (routes,
  JetStream R3, the same auth), which stands in for ``nats_server`` (``flags``, ``connect``,
  ``peer_creds``), stopped after;
- ``nats_url``: its URL;
- ``nc``: a NATS client connected to it as the admin identity, closed after;
- ``openssh``: an :class:`OpenSSH` helper (skips locally, fails under CI, if ssh is missing);
- ``services``: a factory that starts service subprocesses and stops them all after.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import OpenSSH, openssh_available
from meshssh_testkit.process import ServiceProcess

__all__ = ["ServiceFactory", "need_tool"]


def need_tool(available: bool, what: str) -> None:
    """Skip when ``what`` is unavailable locally; fail under CI, where it must be installed."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI but is missing")
    pytest.skip(f"{what} not available on this machine")


@pytest.fixture
async def nats_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server with JetStream and auth on, on a port it picked itself.

    A test parametrized with ``@pytest.mark.parametrize("nats_server", ["tls"], indirect=True)``
    gets it with TLS (``tls://``; the services' flags carry the bus CA).
    """
    tls = getattr(request, "param", "plaintext") == "tls"
    server = await NatsServer.start(tmp_path / "nats-store", tls=tls)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """Three nats-server nodes routed together, JetStream R3 and auth on, every port fresh."""
    cluster = await NatsCluster.start(tmp_path / "nats-cluster")
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """The URL of the test's nats-server."""
    return nats_server.url


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A NATS client connected to the test's nats-server (the admin identity: everything)."""
    client = await nats_server.connect(
        "admin", name="test", max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def openssh(tmp_path: Path) -> OpenSSH:
    """The real OpenSSH client tools with a temporary key, known_hosts and config."""
    need_tool(openssh_available(), "the OpenSSH client (ssh, scp, sftp)")
    return OpenSSH(tmp_path / "openssh")


class ServiceFactory:
    """Starts service processes; the fixture stops every one of them."""

    def __init__(self) -> None:
        self.started: list[ServiceProcess] = []

    async def start(
        self, name: str, *args: str, ready: bool = True, **kw: object
    ) -> ServiceProcess:
        """Start console script ``name``; wait for ``/readyz`` unless ``ready`` is False."""
        proc = await ServiceProcess.start(name, *args, **kw)  # type: ignore[arg-type]
        self.started.append(proc)
        if ready:
            await proc.wait_ready()
        return proc


@pytest.fixture
async def services() -> AsyncIterator[ServiceFactory]:
    """A :class:`ServiceFactory`; every process it started is stopped after the test."""
    factory = ServiceFactory()
    try:
        yield factory
    finally:
        for proc in factory.started:
            await proc.stop()
