"""The two rule kinds with a third-party identity provider, real processes and real OpenSSH.

The identity provider is a small OIDC provider this test runs itself on a real HTTP server
(discovery, JWKS, device authorization and token endpoints), signing with an ES256 key the test
generated. Nothing here was written by meshssh: ``meshssh-authn --issuer`` mirrors its keys, as it
would Keycloak's. Its user, Casey, is one management has never seen. The device flow is approved
as soon as it starts (what Casey's browser would do); the provider fakes only the login page.

Then the rest is the real system: nats-server, ``meshssh-authn``, ``meshssh-policy`` with the
demo seed (one legacy TCP/22 rule, users → servers), and two agents, ``demo-server`` (sshd and
the relay) and ``demo-laptop`` (its OpenSSH drop-in). Plain ``ssh`` goes through the drop-in.

- Under the legacy TCP/22 rule, Casey logs in, and then ``meshctl users ls`` lists Casey with
  the email and name from the token, first seen and last login.
- Under an ``ssh`` rule, Casey is refused (not authorized) until an admin puts Casey into the
  rule's authorized group with ``meshctl``; then Casey logs in.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshssh_common.http_server import HttpServer
from meshssh_common.ssh_auth import authorize
from meshssh_common.wire import SshAuth
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import openssh_available
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import run_command, script
from meshssh_testkit.whole_system import audit_events

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "services/policy/demo/seed.json"
ADMIN_TOKEN = "access-rules-admin-token-0123456789"
USER = getpass.getuser()
IS_ROOT = os.geteuid() == 0
CASEY = {"sub": "idp|casey-7f3a9c", "email": "casey@example.org", "name": "Casey Newcomer"}


@dataclass
class ThirdPartyIssuer:
    """A third-party OIDC provider whose signing key the test holds."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    kid: str = "third-party-k1"
    url: str = ""
    approved: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens_issued: int = 0

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    def token(self, user: dict[str, str]) -> str:
        now = int(time.time())
        claims = {**user, "iss": self.url, "aud": "meshssh", "iat": now, "exp": now + 600}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})

    def app(self) -> Starlette:
        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.url,
                    "jwks_uri": f"{self.url}/jwks",
                    "device_authorization_endpoint": f"{self.url}/device",
                    "token_endpoint": f"{self.url}/token",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                }
            )

        async def jwks(_: Request) -> JSONResponse:
            return JSONResponse(self.jwks())

        async def device(_: Request) -> JSONResponse:
            code = secrets.token_urlsafe(16)
            self.approved[code] = CASEY  # Casey's browser approves at once
            return JSONResponse(
                {
                    "device_code": code,
                    "user_code": "CASE-Y123",
                    "verification_uri": f"{self.url}/activate",
                    "expires_in": 600,
                    "interval": 1,
                }
            )

        async def token(request: Request) -> JSONResponse:
            form = parse_qs((await request.body()).decode())
            user = self.approved.get(form.get("device_code", [""])[0])
            if user is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            self.tokens_issued += 1
            signed = self.token(user)
            return JSONResponse(
                {
                    "access_token": signed,
                    "id_token": signed,
                    "token_type": "Bearer",
                    "expires_in": 600,
                }
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/device", device, methods=["POST"]),
                Route("/token", token, methods=["POST"]),
            ]
        )


async def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    result = await run_command(*argv, env=env or {}, timeout=timeout)
    return result.returncode, result.out, result.err


async def start_agent(
    tmp: Path, name: str, ip: str, key: str, api: str, nats_server: NatsServer, *flags: str
) -> AgentProcess:
    agent = await AgentProcess.start(
        tmp / name,
        "--mesh-ip",
        ip,
        "--name",
        name,
        "--setup-key",
        key,
        *nats_server.flags(),
        "--management-url",
        api,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        *flags,
    )
    await agent.wait_status(lambda s: s["registered"], timeout=60)
    return agent


@dataclass
class Mesh:
    tmp: Path
    api: str
    issuer: ThirdPartyIssuer
    relay_port: int
    sshd_ops: str
    ssh_config: Path

    async def ssh(self, command: str) -> tuple[int, str, str]:
        """Plain OpenSSH through the agent-written drop-in, as the local user."""
        argv = [
            "ssh",
            "-F",
            str(self.ssh_config),
            "-p",
            str(self.relay_port),
            f"{USER}@demo-server",
            command,
        ]
        return await run(*argv, timeout=90)

    async def meshctl(self, *args: str) -> str:
        code, out, err = await run(
            script("meshctl"),
            *args,
            env={"MESHSSH_API_URL": self.api, "MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        assert code == 0, (args, err)
        return out

    async def users(self) -> dict[str, dict[str, Any]]:
        return {u["id"]: u for u in json.loads(await self.meshctl("--json", "users", "ls"))}

    async def sshd_applies(self, allowed: bool) -> None:
        """Wait until demo-server's sshd holds a map whose table says ``allowed`` for Casey."""
        async with asyncio.timeout(30):
            while True:
                netmap = json.loads(await self.meshctl("--json", "peers", "netmap", "demo-server"))
                table = msgspec.convert(netmap["ssh_auth"], SshAuth)
                if authorize(table, CASEY["sub"], USER) is allowed:
                    break
                await asyncio.sleep(0.2)
            async with httpx.AsyncClient(timeout=5) as http:
                while True:  # sshd reports the serial of the map it applied
                    text = (await http.get(f"http://{self.sshd_ops}/metrics")).text
                    m = re.search(r"^meshssh_sshd_netmap_serial (\S+)$", text, re.M)
                    if m and float(m[1]) >= netmap["serial"]:
                        return
                    await asyncio.sleep(0.1)


@pytest.fixture
async def mesh(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[Mesh]:
    need_tool(openssh_available(), "OpenSSH (ssh)")
    issuer = ThirdPartyIssuer()
    http = HttpServer(issuer.app(), "127.0.0.1:0")
    issuer.url = http.url
    serving = asyncio.create_task(http.serve())
    agents: list[AgentProcess] = []
    try:
        await services.start(
            "meshssh-authn",
            *nats_server.authn_flags(),
            "--issuer",
            issuer.url,
            "--audience",
            "meshssh",
            "--client-id",
            "meshssh",
        )
        policy = await services.start(
            "meshssh-policy",
            *nats_server.flags("policy"),
            "--bus-keys",  # policy signs the peers' JWTs when they register
            str(nats_server.creds("policy").parent),  # the bus keys directory
            "--listen",
            "127.0.0.1:0",
            "--seed",
            str(SEED),
            "--mesh-prefix",
            "127.0.0.0/8",
            env={"MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        found = re.search(r"api listening.*url=(http://\S+)", policy.output())
        assert found, policy.output()
        api = found[1]
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=5) as client:
            while (await client.get(f"{api}/api/v1/auth/config")).status_code != 200:
                await asyncio.sleep(0.1)  # until authn has mirrored the third-party provider
        sshd_ops = f"127.0.0.1:{free_port('127.0.0.1')}"
        server = await start_agent(
            tmp_path,
            "demo-server",
            "127.0.0.2",
            "meshssh-demo-server-key-0001",
            api,
            nats_server,
            "--allow-server-ssh",
            *(["--enable-ssh-root"] if IS_ROOT else []),
            "--sshd-ops-listen",
            sshd_ops,
            "--disable-ssh-config",
        )
        agents.append(server)
        status = await server.wait_status(
            lambda s: all(server.child(s, c)["state"] == "running" for c in ("sshd", "relay")),
            timeout=60,
        )
        dropin = tmp_path / "ssh_config.d" / "99-meshssh.conf"
        agents.append(
            await start_agent(
                tmp_path,
                "demo-laptop",
                "127.0.0.3",
                "meshssh-demo-laptop-key-0001",
                api,
                nats_server,
                "--ssh-jwt-cache-ttl",
                "600",
                "--ssh-config-file",
                str(dropin),
            )
        )
        async with asyncio.timeout(30):
            while "demo-server" not in (dropin.read_text() if dropin.exists() else ""):
                await asyncio.sleep(0.05)  # the laptop agent wrote its drop-in
        config = tmp_path / "ssh_config"
        config.write_text(f"BatchMode yes\nConnectTimeout 20\nInclude {dropin}\n")
        yield Mesh(tmp_path, api, issuer, status["relay_port"], sshd_ops, config)
    finally:
        for agent in reversed(agents):
            await agent.stop()
        http.stop()
        async with asyncio.timeout(10):
            await serving


async def test_a_user_management_never_saw_logs_in_under_a_tcp22_rule_and_is_then_listed(
    mesh: Mesh, nc: NATS
) -> None:
    assert CASEY["sub"] not in await mesh.users()
    await mesh.sshd_applies(allowed=True)  # the legacy rule: open to every validated user

    rc, out, err = await mesh.ssh("id -un")
    assert (rc, out.strip()) == (0, USER), err
    assert mesh.issuer.tokens_issued == 1  # the third-party provider signed Casey's token
    accepted = [
        e for e in await audit_events(nc, wait_for="auth-accepted") if e.kind == "auth-accepted"
    ]
    assert [(e.jwt_user, e.email, e.name) for e in accepted] == [tuple(CASEY.values())]

    async with asyncio.timeout(20):  # policy adds Casey from sshd's auth-accepted event
        while CASEY["sub"] not in (listed := await mesh.users()):
            await asyncio.sleep(0.2)
    casey = listed[CASEY["sub"]]
    assert (casey["email"], casey["name"], casey["groups"]) == (CASEY["email"], CASEY["name"], [])
    assert 0 < casey["first_seen"] == casey["last_login"] <= time.time()
    table = await mesh.meshctl("users", "ls")
    row = next(line for line in table.splitlines() if line.startswith(CASEY["sub"]))
    assert CASEY["email"] in row
    assert CASEY["name"] in row
    assert "FIRST SEEN" in table.splitlines()[0]
    assert "LAST LOGIN" in table.splitlines()[0]

    rc, _, err = await mesh.ssh("true")  # a later login moves last login only
    assert rc == 0, err
    async with asyncio.timeout(20):
        while (again := (await mesh.users())[CASEY["sub"]])["last_login"] == casey["last_login"]:
            await asyncio.sleep(0.2)
    assert again["first_seen"] == casey["first_seen"]
    assert again["last_login"] > casey["last_login"]


async def test_under_an_ssh_rule_the_user_is_refused_until_an_admin_adds_them_to_its_group(
    mesh: Mesh, nc: NATS
) -> None:
    rc, _, err = await mesh.ssh("true")  # first login, under the legacy rule: Casey is added
    assert rc == 0, err
    async with asyncio.timeout(20):
        while CASEY["sub"] not in await mesh.users():
            await asyncio.sleep(0.2)

    # The admin replaces the legacy rule by an ssh rule for the group "admins" only.
    await mesh.meshctl("groups", "create", "admins", "--name", "Admins")
    await mesh.meshctl(
        "policies",
        "create",
        "admins ssh",
        "--id",
        "admins-ssh",
        "--source",
        "users",
        "--destination",
        "servers",
        "--protocol",
        "ssh",
        "--authorized-group",
        "admins",
    )
    await mesh.meshctl("policies", "rm", "users-to-servers-ssh")
    await mesh.sshd_applies(allowed=False)

    rc, out, err = await mesh.ssh("id -un")
    assert (rc, out) == (255, "")
    assert "Permission denied" in err, err
    refused = [
        e for e in await audit_events(nc, wait_for="auth-rejected") if e.kind == "auth-rejected"
    ]
    assert refused, err
    assert {(e.reason, e.local_user) for e in refused} == {("not_authorized", USER)}

    await mesh.meshctl("groups", "add", "admins", "--user", CASEY["sub"])
    await mesh.sshd_applies(allowed=True)
    rc, out, err = await mesh.ssh("id -un")
    assert (rc, out.strip()) == (0, USER), err
    casey = (await mesh.users())[CASEY["sub"]]
    assert casey["groups"] == ["admins"]
    assert casey["email"] == CASEY["email"]  # the first login's record, not a new one
