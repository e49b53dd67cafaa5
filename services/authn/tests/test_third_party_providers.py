"""Standards compliance against providers nobody here wrote: oidc-provider-mock and glewlwyd.

Each token goes through the same path an SSH server uses: authn mirrors the provider's keys
into KV, and the validator is built only from the KV snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.errors import Unavailable
from meshssh_common.rpc import request
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
    JwksRefreshReply,
    JwksRefreshRequest,
)
from meshssh_testkit import NatsServer, run_command, script
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.ports import free_port

if TYPE_CHECKING:
    from conftest import AuthnFactory, Kv

_UVICORN = re.compile(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)")


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class MockProvider:
    proc: asyncio.subprocess.Process
    issuer: str

    async def id_token(self, sub: str, client_id: str) -> str:
        """An ID token from the authorization-code flow, driven as a browser would."""
        redirect = "http://localhost/callback"
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect,
            "scope": "openid email",
            "state": "s1",
            "nonce": "n1",
        }
        async with httpx.AsyncClient(timeout=10) as http:
            url = f"{self.issuer}/oauth2/authorize"
            consent = await http.post(url, params=params, data={"sub": sub})
            assert consent.status_code == 302, consent.text
            code = parse_qs(urlsplit(consent.headers["location"]).query)["code"][0]
            tokens = await http.post(
                f"{self.issuer}/oauth2/token",
                data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
                auth=(client_id, "any-secret"),
            )
            assert tokens.status_code == 200, tokens.text
            return str(tokens.json()["id_token"])


@pytest.fixture
async def mock_provider() -> AsyncIterator[MockProvider]:
    """oidc-provider-mock (PyPI, Flask + Authlib) as its own process on a port it picked."""
    claims = '{"sub": "alice", "email": "alice@example.com"}'
    proc = await asyncio.create_subprocess_exec(
        script("oidc-provider-mock"),
        "-p",
        "0",
        "--user-claims",
        claims,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while line := await proc.stderr.readline():
                if m := _UVICORN.search(line):
                    break
            else:
                pytest.fail("oidc-provider-mock exited before listening")
        drain = asyncio.create_task(proc.stderr.read())
        yield MockProvider(proc, m[1].decode())
    finally:
        await stop_process(proc)
    with contextlib.suppress(Exception):
        await drain


async def test_tokens_of_oidc_provider_mock_validate_and_keep_validating_when_it_stops(
    nats_server: NatsServer, services: ServiceFactory, mock_provider: MockProvider, kv: Kv, nc: NATS
) -> None:
    args = (
        *nats_server.authn_flags(),
        "--issuer",
        mock_provider.issuer,
        "--audience",
        "test-rp",
        "--jwks-refresh-min-interval",
        "0",
        "--jwks-retry-interval",
        "1",
    )
    first = await services.start("meshssh-authn", *args)
    snap = await kv.wait_snapshot()
    assert snap.jwt.issuer == mock_provider.issuer
    assert snap.client is None  # no device flow at this provider: nothing to offer clients
    token = await mock_provider.id_token("alice", "test-rp")
    assert "kid" not in jwt.get_unverified_header(token)  # one key, no kid: still valid
    assert (await kv.validator()).validate(token).user_id == "alice"

    await stop_process(mock_provider.proc)  # the provider goes away
    with pytest.raises(Unavailable):
        await request(
            nc, subjects.AUTHN_JWKS_REFRESH, JwksRefreshRequest(kid="new"), JwksRefreshReply
        )
    assert await kv.snapshot() == snap
    assert (await kv.validator()).validate(token).user_id == "alice"

    assert await first.stop() == 0  # and authn restarts while it is still away
    await services.start("meshssh-authn", *args)
    assert await kv.snapshot() == snap
    assert (await kv.validator()).validate(token).user_id == "alice"


def _glewlwyd_available() -> bool:
    return bool(shutil.which("glewlwyd") and shutil.which("sqlite3")) and _SCHEMA.exists()


_SCHEMA = Path("/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3")
_CONF = Path("/etc/glewlwyd/glewlwyd.conf")


@dataclass
class Glewlwyd:
    proc: asyncio.subprocess.Process
    base: str

    @property
    def issuer(self) -> str:
        return f"{self.base}/api/oidc"

    async def configure(self, *, client_id: str, user: str, password: str) -> None:
        """OIDC plugin (RS256, device flow), a public client and a user, over its admin API."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        enc = serialization.Encoding.PEM
        pem = key.private_bytes(
            enc, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        pub = key.public_key().public_bytes(enc, serialization.PublicFormat.SubjectPublicKeyInfo)
        async with httpx.AsyncClient(base_url=f"{self.base}/api", timeout=10) as admin:
            ok = await admin.post("/auth/", json={"username": "admin", "password": "password"})
            assert ok.status_code == 200
            plugin = {
                "module": "oidc",
                "name": "oidc",
                "display_name": "oidc",
                "enabled": True,
                "parameters": {
                    "iss": self.issuer,
                    "jwt-type": "rsa",
                    "jwt-key-size": "256",
                    "key": pem,
                    "cert": pub.decode(),
                    "access-token-duration": 3600,
                    "refresh-token-duration": 86400,
                    "code-duration": 600,
                    "allow-non-oidc": False,
                    "auth-type-code-enabled": True,
                    "auth-type-refresh-enabled": True,
                    "auth-type-device-enabled": True,
                    "device-authorization-expiration": 600,
                    "device-authorization-interval": 1,
                },
            }
            for path, body in (
                ("/mod/plugin/", plugin),
                (
                    "/client/",
                    {
                        "client_id": client_id,
                        "client_name": client_id,
                        "confidential": False,
                        "enabled": True,
                        "authorization_type": ["device_authorization"],
                    },
                ),
                (
                    "/user/",
                    {
                        "username": user,
                        "password": password,
                        "name": "Alice",
                        "email": "alice@example.com",
                        "scope": ["openid"],
                        "enabled": True,
                    },
                ),
            ):
                resp = await admin.post(path, json=body)
                assert resp.status_code == 200, (path, resp.text)

    async def approve(self, user_code: str, *, client_id: str, user: str, password: str) -> None:
        """What the user does in glewlwyd's web UI: log in, grant the scope, confirm the code."""
        async with httpx.AsyncClient(base_url=f"{self.base}/api", timeout=10) as browser:
            assert (
                await browser.post("/auth/", json={"username": user, "password": password})
            ).status_code == 200
            granted = await browser.put(f"/auth/grant/{client_id}", json={"scope": "openid"})
            assert granted.status_code == 200
            done = await browser.get("/oidc/device", params={"code": user_code, "g_continue": ""})
            assert "prompt=deviceComplete" in done.headers.get("location", "")


@pytest.fixture
async def glewlwyd(tmp_path: Path) -> AsyncIterator[Glewlwyd]:
    """Debian's glewlwyd (a full OIDC provider in C) on a fresh sqlite database."""
    need_tool(_glewlwyd_available(), "glewlwyd and sqlite3 (Debian packages)")
    db = tmp_path / "glewlwyd.db"
    schema, conf = await asyncio.to_thread(lambda: (_SCHEMA.read_bytes(), _CONF.read_text()))
    await run_command("sqlite3", str(db), input=schema, timeout=30, check=True)
    port = free_port()  # glewlwyd must know its URL before it binds
    for name, value in (
        ("port", str(port)),
        ("external_url", f'"http://127.0.0.1:{port}"'),
        ("log_mode", '"console"'),
        ("log_level", '"WARNING"'),
    ):
        conf = re.sub(rf"^{name}\s*=.*$", f"{name}={value}", conf, flags=re.M)
    conf = conf.replace(
        '@include "/etc/glewlwyd/glewlwyd-db.conf"',
        f'database = {{ type = "sqlite3"; path = "{db}"; }};',
    )
    await asyncio.to_thread(
        (tmp_path / "glewlwyd.conf").write_text, conf + '\nbind_address="127.0.0.1"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        "glewlwyd",
        "-c",
        str(tmp_path / "glewlwyd.conf"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(20):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(f"{base}/api/")
                    break
                assert proc.returncode is None, "glewlwyd exited at startup"
                await asyncio.sleep(0.05)
        yield Glewlwyd(proc, base)
    finally:
        await stop_process(proc)


async def test_a_glewlwyd_device_flow_through_the_broker_yields_a_token_valid_from_kv(
    glewlwyd: Glewlwyd, authn: AuthnFactory, kv: Kv, nc: NATS
) -> None:
    await glewlwyd.configure(client_id="meshssh", user="alice", password="alice-pw-123")
    await authn.start(
        "--issuer",
        glewlwyd.issuer,
        "--client-id",
        "meshssh",
        "--audience",
        "meshssh",
        "--use-id-token",
        "--scope",
        "openid",
    )
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    assert snap.client.device_authorization_endpoint == f"{glewlwyd.issuer}/device_authorization"
    started = await request(
        nc, subjects.device_start("p1"), DeviceStartRequest(peer_id="p1"), DeviceStartReply
    )
    poll = DevicePollRequest(device_code=started.device_code)
    assert (await request(nc, subjects.device_poll("p1"), poll, DevicePollReply)).status in (
        "pending",
        "slow_down",
    )
    await glewlwyd.approve(
        started.user_code, client_id="meshssh", user="alice", password="alice-pw-123"
    )
    async with asyncio.timeout(20):
        while (
            done := await request(nc, subjects.device_poll("p1"), poll, DevicePollReply)
        ).status != "ok":
            assert done.status in ("pending", "slow_down")
            await asyncio.sleep(1)
    header = jwt.get_unverified_header(done.token)  # a per-peer token for p1
    (exchange_key,) = [k for k in snap.exchange_keys if k["kid"] == header["kid"]]
    claims = jwt.decode(
        done.token, jwt.PyJWK(exchange_key).key, algorithms=["EdDSA"], audience="meshssh:peer:p1"
    )
    assert claims["idp_iss"] == glewlwyd.issuer
    assert claims["sub"]  # glewlwyd's subject is pairwise: opaque, but present
