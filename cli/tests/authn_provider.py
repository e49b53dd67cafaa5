"""Fixtures of the login tests (loaded by conftest): a real meshssh-authn with its provider.

``provider`` starts ``meshssh-authn`` (nats-server from the testkit, users made with
``meshssh-authn users add``) and reads its client config from the JWKS snapshot in KV, the
way the management plane does. ``approve`` posts the login form as a browser does.
``management`` adds the real meshssh-policy, whose ``/api/v1/auth/config`` serves that
config (``meshssh login --management-url``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.wire import JwksSnapshot, OidcClientConfig
from meshssh_testkit import ServiceProcess, run_command, script
from meshssh_testkit.management import Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory

PASSWORD = "alice-password-1"


@dataclass
class Provider:
    """A running embedded provider and what clients learn about it."""

    process: ServiceProcess
    client: OidcClientConfig
    snapshot: JwksSnapshot
    nats: NatsServer

    @property
    def issuer(self) -> str:
        return self.client.issuer

    async def approve(
        self, user_code: str, username: str = "alice", password: str = PASSWORD
    ) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.post(
                f"{self.issuer}/device",
                data={
                    "user_code": user_code,
                    "username": username,
                    "password": password,
                    "confirm": "yes",
                },
            )

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"{self.process.ops_url}/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
async def provider(tmp_path: Path, nats_server: NatsServer, services: ServiceFactory) -> Provider:
    users = tmp_path / "users.json"
    await run_command(
        script("meshssh-authn"),
        "users",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--password-stdin",
        "--users-file",
        str(users),
        input=PASSWORD + "\n",
        timeout=30,
        check=True,
    )
    proc = await services.start(
        "meshssh-authn",
        *nats_server.authn_flags(),
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        str(users),
        "--device-poll-interval",
        "1",
    )
    nc = await nats_server.connect()
    try:
        kv = TypedKV(
            await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS),
            JwksSnapshot,
            verifier=nats_server.jwks_verifier(),
        )
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(subjects.JWKS_KEY)
                    if entry.value:
                        break
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
    snapshot = entry.value
    assert snapshot.client is not None
    return Provider(proc, snapshot.client, snapshot, nats_server)


@pytest.fixture
async def management(
    provider: Provider, services: ServiceFactory, nc: NATS, tmp_path: Path
) -> Management:
    """The real meshssh-policy on the provider's NATS, once it serves the provider's config."""
    policy = await Management.start(services, provider.nats, nc, tmp_path / "policy")
    async with asyncio.timeout(15), httpx.AsyncClient(timeout=5) as http:
        while (await http.get(f"{policy.api}/api/v1/auth/config")).status_code != 200:
            await asyncio.sleep(0.05)
    return policy
