"""Fixtures of the authn tests: users files, authn run in-process, and a browser stand-in.

``authn`` runs the real service body (``serve``) through the real service runner on the test's
nats-server, with every port chosen by the OS; the test gets its metrics registry and can
stop it. ``browser`` posts the embedded provider's login form over HTTP the way a browser
does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_authn.passwords import hash_password
from meshssh_authn.server import serve
from meshssh_authn.settings import AuthnSettings
from meshssh_authn.users import User, UsersFile
from meshssh_common import subjects
from meshssh_common.http_server import HttpServer
from meshssh_common.jwt_validation import JwtValidator
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.service import ServiceContext, run_service
from meshssh_common.settings import parse_settings
from meshssh_common.signed_doc import Signer, Verifier
from meshssh_common.wire import JwksSnapshot
from meshssh_testkit import NatsServer

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}


@pytest.fixture
def passwords() -> dict[str, str]:
    """The clear-text passwords of the users in ``users_file``."""
    return dict(PASSWORDS)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    """A users file with alice (group dev) and bob (groups dev, ops)."""
    path = tmp_path / "users.json"
    users = UsersFile(path)
    users.add(
        "alice",
        User(
            email="alice@example.com",
            name="Alice",
            groups=("dev",),
            password=hash_password(PASSWORDS["alice"], log2_n=10),
        ),
    )
    users.add(
        "bob",
        User(
            email="bob@example.com",
            name="Bob",
            groups=("dev", "ops"),
            password=hash_password(PASSWORDS["bob"], log2_n=10),
        ),
    )
    return path


@dataclass
class RunningAuthn:
    """One in-process authn replica."""

    metrics: ServiceMetrics
    stop_event: asyncio.Event
    task: asyncio.Task[int]

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def stop(self) -> int:
        self.stop_event.set()
        async with asyncio.timeout(15):
            return await self.task


@dataclass
class AuthnFactory:
    nats: NatsServer
    jwks_key: Path  # the JWKS signing key every replica of the test shares
    running: list[RunningAuthn] = field(default_factory=list)

    async def start(self, *args: str, instance: str = "authn-test") -> RunningAuthn:
        argv = [*self.nats.flags("authn"), "--ops-listen", "127.0.0.1:0"]
        if "--jwks-signing-key" not in args:
            argv += ["--jwks-signing-key", str(self.jwks_key)]
        if "--listen" not in args:
            argv += ["--listen", "127.0.0.1:0"]
        settings = parse_settings(
            AuthnSettings, [*argv, *args, "--instance", instance], prog="meshssh-authn"
        )
        metrics = ServiceMetrics("authn")
        stop = asyncio.Event()
        contexts: list[ServiceContext] = []

        async def body(ctx: ServiceContext) -> None:
            contexts.append(ctx)
            await serve(ctx)

        task = asyncio.create_task(run_service("authn", settings, body, metrics=metrics, stop=stop))
        running = RunningAuthn(metrics, stop, task)
        self.running.append(running)
        async with asyncio.timeout(20):
            while not (contexts and contexts[0].ready.is_set()):
                if task.done():
                    raise RuntimeError(f"authn exited with {task.result()}")
                await asyncio.sleep(0.02)
        return running


@pytest.fixture
def jwks_key(nats_server: NatsServer) -> Path:
    """The test's JWKS signing key (Ed25519 PEM, made with ``new_signing_key``) that every
    authn of the test signs with: ``<bus keys>/jwks-signing.pem``."""
    return nats_server.jwks_signing_key()


@pytest.fixture
async def authn(nats_server: NatsServer, jwks_key: Path) -> AsyncIterator[AuthnFactory]:
    """Start authn replicas in-process; all are stopped after the test."""
    factory = AuthnFactory(nats_server, jwks_key)
    try:
        yield factory
    finally:
        for running in factory.running:
            if not running.task.done():
                with contextlib.suppress(Exception):
                    await running.stop()


class Kv:
    """Reads of what authn publishes (the JWKS document opened with the test key's pins)."""

    def __init__(self, nc: NATS, jwks_key: Path) -> None:
        self.nc = nc
        self.verifier = Verifier("jwks", Signer.load(jwks_key, kind="jwks").pins)

    async def snapshot(self) -> JwksSnapshot | None:
        bucket = await open_bucket(self.nc.jetstream(), subjects.BUCKET_JWKS)
        kv = TypedKV(bucket, JwksSnapshot, verifier=self.verifier)
        entry = await kv.get(subjects.JWKS_KEY)
        return entry.value if entry is not None else None

    async def wait_snapshot(self, timeout: float = 15.0, **want: Any) -> JwksSnapshot:
        """The snapshot once it exists (and its fields equal ``want``)."""
        async with asyncio.timeout(timeout):
            while True:
                snap = await self.snapshot()
                if snap is not None and all(getattr(snap, k) == v for k, v in want.items()):
                    return snap
                await asyncio.sleep(0.05)

    async def validator(self) -> JwtValidator:
        """A validator built only from the keys and config in KV, as an SSH server builds it."""
        snap = await self.snapshot()
        assert snap is not None, "no JWKS snapshot in KV"
        return JwtValidator.from_snapshot(snap)


@pytest.fixture
async def kv(nats_server: NatsServer, jwks_key: Path) -> AsyncIterator[Kv]:
    client = await nats_server.connect(name="test-kv")
    try:
        yield Kv(client, jwks_key)
    finally:
        await client.close()


class Browser:
    """Posts the embedded provider's login form as a browser does (form-encoded, no JS)."""

    async def sign_in(
        self,
        verification_uri: str,
        user_code: str,
        username: str,
        password: str,
        action: str = "approve",
    ) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.get(verification_uri, params={"user_code": user_code})
            if page.status_code == 200:  # the confirm step: what the code approves
                for name in ('name="username"', 'name="password"', 'name="confirm"'):
                    assert name in page.text
            return await http.post(
                verification_uri,
                data={
                    "user_code": user_code,
                    "username": username,
                    "password": password,
                    "action": action,
                    "confirm": "yes",
                },
            )


@pytest.fixture
def browser() -> Browser:
    return Browser()


class FakeIdp:
    """A minimal OIDC provider on a real HTTP server, for what real providers cannot show.

    It serves discovery and a JWKS whose keys, ``Cache-Control`` and health the test controls,
    and counts JWKS fetches. Compliance with real providers is tested separately
    (oidc-provider-mock, glewlwyd); this one exists to count and to misbehave on demand.
    """

    def __init__(self) -> None:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.jwks_fetches = 0
        self.cache_control = "public, max-age=3600"
        self.healthy = True
        self.keys: dict[str, Any] = {}
        app = FastAPI()
        self.server = HttpServer(app, "127.0.0.1:0")
        self.issuer = self.server.url

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> JSONResponse:
            if not self.healthy:
                return JSONResponse({"error": "down"}, status_code=503)
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{self.issuer}/keys",
                    "token_endpoint": f"{self.issuer}/token",
                    "device_authorization_endpoint": f"{self.issuer}/device",
                }
            )

        @app.get("/keys")
        async def keys() -> JSONResponse:
            self.jwks_fetches += 1
            if not self.healthy:
                return JSONResponse({"error": "down"}, status_code=503)
            jwks = [self.public(kid) for kid in self.keys]
            return JSONResponse({"keys": jwks}, headers={"Cache-Control": self.cache_control})

    def add_key(self, kid: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def public(self, kid: str) -> dict[str, Any]:
        from jwt.algorithms import ECAlgorithm

        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
        return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}

    def token(self, kid: str, sub: str = "alice", aud: str = "meshssh", **more: Any) -> str:
        """A token signed by ``kid``; ``more`` adds or overrides claims (iat, exp, iss...)."""
        import time

        import jwt

        now = int(time.time())
        claims = {"iss": self.issuer, "aud": aud, "sub": sub, "iat": now, "exp": now + 300}
        return jwt.encode(
            {**claims, **more}, self.keys[kid], algorithm="ES256", headers={"kid": kid}
        )


@pytest.fixture
async def fake_idp() -> AsyncIterator[FakeIdp]:
    idp = FakeIdp()
    idp.add_key("k1")
    task = asyncio.create_task(idp.server.serve())
    try:
        yield idp
    finally:
        idp.server.stop()
        async with asyncio.timeout(10):
            await task
