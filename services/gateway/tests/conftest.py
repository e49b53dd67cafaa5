"""Fixtures of the gateway's tests: one real system per test module.

``system`` (module scope, its own event loop) starts a nats-server, meshssh-authn,
meshssh-policy, a server agent and meshssh-gateway (:mod:`meshssh_testkit.gateway_system`);
the tests of a module share it and run on one xdist worker (``xdist_group``), in order.
Starting the system takes seconds; sharing it keeps the suite fast.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from meshssh_testkit.gateway_system import GatewaySystem, gateway_system
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import openssh_available
from meshssh_testkit.plugin import ServiceFactory, need_tool


def mesh_net() -> str:
    """A 127.0.<n> prefix for this module's peers (distinct per xdist worker and process)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    n = 180 + (int(worker) if worker.isdigit() else 0) * 7 + os.getpid() % 7
    return f"127.0.{n % 250}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewaySystem]:
    """The whole system with one gateway (see the module docstring)."""
    need_tool(openssh_available(), "OpenSSH (ssh-keygen)")
    tmp = tmp_path_factory.mktemp("gateway")
    nats_server = await NatsServer.start(tmp / "nats-store")
    factory = ServiceFactory()
    try:
        flags = ("--enable-ssh-root",) if os.geteuid() == 0 else ()
        async with gateway_system(
            nats_server, factory, tmp, net=mesh_net(), server_flags=flags
        ) as running:
            yield running
    finally:
        for proc in reversed(factory.started):
            await proc.stop()
        await nats_server.stop()
