"""Fixtures for the sshd tests: a JWT issuer, the mesh state in KV, an in-process server,
and OpenSSH clients that send the JWT as their password.

Everything is real: nats-server with JetStream (testkit), the sshd service run by the common
runner in this event loop, OpenSSH's ssh/scp/sftp. The identity provider is replaced by a
signing key made here; the tokens are real JWTs and the keys reach sshd as a real
``JwksSnapshot`` in KV ``meshssh-jwks``, as authn would put them.

Per-peer tokens are minted here too (:class:`Exchange`, standing in for authn's exchange key:
its public JWK goes into the snapshot's ``exchange_keys``), so these tests do not depend on
authn's token-exchange service. Most suites predate per-peer tokens and log in with the IdP's
own token, so the factory starts sshd with ``accept_idp_tokens=True`` unless a test says
otherwise; ``test_peer_tokens.py`` covers sshd's default (off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.audit_stream import ensure_audit_stream
from meshssh_common.host_keys import HostKey
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.service import ServiceContext, run_service
from meshssh_common.session_rules import attach
from meshssh_common.signed_doc import Signer
from meshssh_common.ssh_auth import build_table
from meshssh_common.wire import (
    AuditEvent,
    FirewallRule,
    JwksSnapshot,
    JwtConfig,
    NetworkMap,
    PeerConfig,
    SessionRules,
    SourcePeer,
)
from meshssh_common.wire.authn import peer_audience
from meshssh_sshd.server import SshServer
from meshssh_sshd.settings import SshdSettings
from meshssh_testkit import NatsServer, OpenSSH, RunResult, ServiceProcess, run_command, script
from meshssh_testkit.os_users import throwaway_user
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.signing import (
    authn_test_key,
    jwks_signer,
    map_signer,
    read_jwks,
    write_test_pins,
)

ISSUER = "https://idp.test"
AUDIENCE = "meshssh"
EXCHANGE_ISSUER = "urn:meshssh:authn"
PEER_ID = "server-1"
MESH_IP = "127.0.0.2"
CLIENT_IP = "127.0.0.3"


@dataclass
class Issuer:
    """A signing key standing in for the identity provider."""

    kid: str = "k1"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def jwks(self) -> tuple[dict[str, Any], ...]:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        return ({**jwk, "kid": self.kid, "use": "sig", "alg": "EdDSA"},)

    def mint(self, sub: str, *, age: float = 0, ttl: float = 300, **claims: Any) -> str:
        now = time.time() - age
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": int(now),
            "exp": int(now + ttl),
            **claims,
        }
        return jwt.encode(body, self.key, algorithm="EdDSA", headers={"kid": self.kid})


@dataclass
class Exchange:
    """authn's exchange key, minting per-peer tokens as authn's token exchange does."""

    kid: str = field(default_factory=lambda: f"x-{uuid.uuid4().hex[:16]}")
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def jwks(self) -> tuple[dict[str, Any], ...]:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        return ({**jwk, "kid": self.kid, "use": "sig", "alg": "EdDSA"},)

    def mint(
        self,
        sub: str,
        *,
        peer: str = PEER_ID,
        iss: str = EXCHANGE_ISSUER,
        age: float = 0,
        ttl: float = 120,
        jti: str | None = None,
        **claims: Any,
    ) -> str:
        """A per-peer token for ``peer``; ``age`` backdates the (original) ``iat``."""
        now = time.time()
        body = {
            "iss": iss,
            "aud": peer_audience(peer),
            "sub": sub,
            "iat": int(now - age),
            "exp": int(now + ttl),
            "jti": jti if jti is not None else secrets.token_urlsafe(16),
            "idp_iss": ISSUER,
            **claims,
        }
        return jwt.encode(
            body, self.key, algorithm="EdDSA", headers={"kid": self.kid, "typ": "JWT"}
        )


def jwt_config() -> JwtConfig:
    return JwtConfig(issuer=ISSUER, audiences=(AUDIENCE,))


def accept_rule(*sources: str, port: str = "22022", action: str = "accept") -> FirewallRule:
    return FirewallRule(
        sources=sources,
        protocol="tcp",
        action=action,  # type: ignore[arg-type]
        policy_id="pol-1",
        port=port,
    )


class Mesh:
    """The management plane's and authn's side of the state sshd reads from KV."""

    mesh_ip = MESH_IP
    client_ip = CLIENT_IP
    peer_id = PEER_ID
    rule = staticmethod(accept_rule)
    jwt_config = staticmethod(jwt_config)

    def __init__(self, nc: NATS, issuer: Issuer, exchange: Exchange | None = None) -> None:
        self.nc = nc
        self.issuer = issuer
        self.exchange = exchange or Exchange()
        self.serial = 0

    async def publish_jwks(
        self,
        issuer: Issuer | None = None,
        *,
        exchange_keys: tuple[dict[str, Any], ...] | None = None,
        idp_keys: tuple[dict[str, Any], ...] | None = None,
        signer: Signer | None = None,
    ) -> None:
        bucket = await open_bucket(self.nc.jetstream(), subjects.BUCKET_JWKS)
        kv = TypedKV(bucket, JwksSnapshot, signer=signer or jwks_signer())
        snap = JwksSnapshot(
            jwt=jwt_config(),
            keys=idp_keys if idp_keys is not None else (issuer or self.issuer).jwks(),
            fetched_at=time.time(),
            source="test",
            exchange_issuer=EXCHANGE_ISSUER,
            exchange_keys=exchange_keys if exchange_keys is not None else self.exchange.jwks(),
        )
        await kv.put(subjects.JWKS_KEY, snap)

    async def publish_map(
        self,
        *,
        grants: Iterable[tuple[str, str]] = (("alice-id", "*"),),
        open_to: Iterable[str] = (),
        rules: Sequence[FirewallRule] | None = None,
        ssh_enabled: bool = True,
        jwt: JwtConfig | None = None,
        with_jwt: bool = True,
        mesh_ip: str = MESH_IP,
        peer_id: str = PEER_ID,
        source_peers: Sequence[SourcePeer] = (),
        claim: str = "sub",
        signer: Signer | None = None,
        session_rules: Mapping[tuple[str, str], SessionRules] | None = None,
    ) -> NetworkMap:
        self.serial += 1
        netmap = NetworkMap(
            serial=self.serial,
            peer=PeerConfig(
                id=peer_id,
                name=peer_id,
                mesh_ip=mesh_ip,
                mesh_prefix="127.0.0.0/8",
                ssh_enabled=ssh_enabled,
                jwt=(jwt or jwt_config()) if with_jwt else None,
            ),
            firewall_rules=tuple(rules) if rules is not None else (accept_rule("127.0.0.0/8"),),
            ssh_auth=attach(
                build_table(claim, grants, any_validated_user=open_to), session_rules or {}
            ),
            source_peers=tuple(source_peers),
        )
        bucket = await open_bucket(self.nc.jetstream(), subjects.BUCKET_NETMAPS)
        kv = TypedKV(bucket, NetworkMap, signer=signer or map_signer())
        await kv.put(subjects.netmap_key(peer_id), netmap)
        return netmap

    async def audit_events(self, *, count: int = 0, timeout: float = 5.0) -> list[AuditEvent]:
        """Every event in MESHSSH_AUDIT (waiting until at least ``count`` are there)."""
        js = self.nc.jetstream()
        events: list[AuditEvent] = []
        async with asyncio.timeout(timeout):
            while True:
                info = await js.stream_info(subjects.AUDIT_STREAM)
                if info.state.messages >= count:
                    break
                await asyncio.sleep(0.05)
        sub = await js.subscribe(subjects.AUDIT_SUBJECTS, ordered_consumer=True)
        try:
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=timeout)
                events.append(codec.decode(msg.data, AuditEvent))
        finally:
            await sub.unsubscribe()
        return events

    async def wait_audit(self, predicate: Any, timeout: float = 5.0) -> AuditEvent:
        """The first audit event matching ``predicate``, waiting for it to be stored."""
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(Exception):
                    for event in await self.audit_events(timeout=timeout):
                        if predicate(event):
                            return event
                await asyncio.sleep(0.1)


@dataclass
class Sshd:
    """A running in-process sshd."""

    server: SshServer
    task: asyncio.Task[int]
    stop: asyncio.Event
    metrics: ServiceMetrics
    host: str
    port: int
    host_key: HostKey

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class SshdFactory:
    def __init__(self, nats: NatsServer, tmp_path: Path) -> None:
        self.nats = nats
        self.tmp_path = tmp_path
        self.running: list[Sshd] = []

    async def start(self, *, mesh_ip: str = MESH_IP, **settings: Any) -> Sshd:
        key_path = self.tmp_path / f"hostkey-{uuid.uuid4().hex[:6]}"
        values: dict[str, Any] = {
            "peer_id": PEER_ID,
            "listen": f"{mesh_ip}:0",
            "host_key": key_path,
            # an authn fixture may have written pins that also trust its own JWKS key
            "pins": self.tmp_path / "pins.json"
            if (self.tmp_path / "pins.json").exists()
            else write_test_pins(self.tmp_path),
            "nats_url": self.nats.url,
            "nats_creds": self.nats.creds("admin"),  # map reading needs a consumer for now
            "ops_listen": "127.0.0.1:0",
            "shutdown_grace": 6.0,
            "kill_grace": 0.5,
            "accept_idp_tokens": True,  # see the module docstring
            **settings,
        }
        config = SshdSettings(**values)
        holder: dict[str, SshServer] = {}
        created = asyncio.Event()

        async def serve(ctx: ServiceContext) -> None:
            holder["server"] = SshServer(ctx)
            created.set()
            await holder["server"].run()

        metrics = ServiceMetrics("sshd")
        stop = asyncio.Event()
        task = asyncio.create_task(run_service("sshd", config, serve, metrics=metrics, stop=stop))
        async with asyncio.timeout(15):
            while not created.is_set() or not holder["server"].listening.is_set():
                if task.done():
                    raise RuntimeError(f"sshd ended early with {task.result()}")
                await asyncio.sleep(0.02)
        server = holder["server"]
        assert server.address is not None
        assert server.host_key is not None
        sshd = Sshd(
            server, task, stop, metrics, server.address[0], server.address[1], server.host_key
        )
        self.running.append(sshd)
        return sshd

    async def stop(self, sshd: Sshd) -> int:
        sshd.stop.set()
        try:
            async with asyncio.timeout(10):
                return await asyncio.shield(sshd.task)
        except TimeoutError:
            import io

            buf = io.StringIO()
            for t in asyncio.all_tasks():
                coro: Any = t.get_coro()
                buf.write(f"task {t.get_name()}:\n")
                while coro is not None:
                    frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                    if frame is not None:
                        buf.write(f"  {frame.f_code.co_filename}:{frame.f_lineno}\n")
                    coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                    if coro is not None and not hasattr(coro, "cr_frame"):
                        buf.write(f"  awaiting {coro!r}\n")
                        break
            raise AssertionError("sshd did not stop:\n" + buf.getvalue()) from None

    async def close(self) -> None:
        for sshd in self.running:
            if not sshd.task.done():
                await self.stop(sshd)


class Client:
    """OpenSSH ssh/scp/sftp that authenticate with a JWT as the password (SSH_ASKPASS)."""

    def __init__(self, openssh: OpenSSH, sshd: Sshd, *, bind: str = CLIENT_IP) -> None:
        self.openssh = openssh
        self.sshd = sshd
        self.bind = bind
        openssh.trust(sshd.host, sshd.port, sshd.host_key.public_line)
        self.askpass = openssh.root / "askpass.sh"
        self.askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$MESHSSH_TEST_TOKEN"\n')
        self.askpass.chmod(0o755)

    def options(self, *extra: str, method: str = "password") -> list[str]:
        o = self.openssh
        return [
            "-F",
            str(o.config),
            "-o",
            "BatchMode=no",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            f"PreferredAuthentications={method}",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={o.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-o",
            f"BindAddress={self.bind}",
            *extra,
        ]

    def env(self, token: str) -> dict[str, str]:
        return {
            "SSH_ASKPASS": str(self.askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
            "MESHSSH_TEST_TOKEN": token,
        }

    async def ssh(
        self,
        *args: str,
        token: str = "",
        user: str = "alice",
        opts: Sequence[str] = (),
        input: bytes | None = None,
        timeout: float = 30.0,
    ) -> RunResult:
        return await self.openssh.run(
            "ssh",
            "-p",
            str(self.sshd.port),
            f"{user}@{self.sshd.host}",
            *args,
            options=self.options(*opts),
            env=self.env(token),
            input=input,
            timeout=timeout,
        )

    async def tool(
        self, tool: str, *args: str, token: str = "", opts: Sequence[str] = (), timeout: float = 60
    ) -> RunResult:
        """scp or sftp (they take -P for the port)."""
        return await self.openssh.run(
            tool,
            "-P",
            str(self.sshd.port),
            *args,
            options=self.options(*opts),
            env=self.env(token),
            timeout=timeout,
        )

    def spawn_args(self, *args: str, user: str = "alice", opts: Sequence[str] = ()) -> list[str]:
        """argv for a long-running ssh started by the test itself."""
        return [
            "ssh",
            *self.options(*opts),
            "-p",
            str(self.sshd.port),
            f"{user}@{self.sshd.host}",
            *args,
        ]


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def new_issuer() -> Any:
    """``new_issuer(kid=...)`` → another signing key (a rotated or foreign provider key)."""
    return Issuer


@pytest.fixture
async def mesh(nc: NATS, issuer: Issuer) -> Mesh:
    """The mesh state with the test issuer's keys in ``meshssh-jwks``.

    It stands in for policy, which makes the audit stream (sshd only publishes to it).
    """
    await ensure_audit_stream(nc.jetstream())
    m = Mesh(nc, issuer)
    await m.publish_jwks()
    return m


@pytest.fixture
async def bare_mesh(nc: NATS, issuer: Issuer) -> Mesh:
    """The mesh state without keys (authn publishes its own), with the audit stream."""
    await ensure_audit_stream(nc.jetstream())
    return Mesh(nc, issuer)


@pytest.fixture
async def sshd_factory(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[SshdFactory]:
    factory = SshdFactory(nats_server, tmp_path)
    try:
        yield factory
    finally:
        await factory.close()


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="session")
def local_user() -> Iterator[str]:
    """A throwaway local account the tests log in as (created as root, removed after).

    Not root: the service cannot switch users, so the tests log in as the current account.
    """
    if os.geteuid() != 0:
        yield current_user()
        return
    with throwaway_user() as name:
        yield name


@pytest.fixture(scope="session")
def other_user() -> Iterator[str]:
    """A second throwaway account ("bob" next to "alice"); any valid name when not root."""
    if os.geteuid() != 0:
        yield "nobody"
        return
    with throwaway_user() as name:
        yield name


AUTHN_PASSWORD = "alice-password-1"


@dataclass
class Authn:
    """A real meshssh-authn with its embedded provider, and what it published."""

    process: ServiceProcess
    snapshot: JwksSnapshot

    @property
    def issuer(self) -> str:
        assert self.snapshot.client is not None
        return self.snapshot.client.issuer

    async def page(self, user_code: str) -> str:
        """The device page's confirm step for ``user_code`` (what the code approves)."""
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{self.issuer}/device", params={"user_code": user_code})
        assert reply.status_code == 200, reply.text
        return reply.text

    async def approve(self, user_code: str, username: str = "alice") -> int:
        """Log in on the provider's device page, as the user's browser would."""
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.post(
                f"{self.issuer}/device",
                data={
                    "user_code": user_code,
                    "username": username,
                    "password": AUTHN_PASSWORD,
                    "confirm": "yes",
                },
            )
        return reply.status_code


@pytest.fixture
async def authn(
    tmp_path: Path, nats_server: NatsServer, nc: NATS, services: ServiceFactory
) -> Authn:
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
        input=AUTHN_PASSWORD + "\n",
        timeout=30,
        check=True,
    )
    key, _ = authn_test_key(tmp_path)  # sshd's pins trust it (SshdFactory reads them)
    proc = await services.start(
        "meshssh-authn",
        *nats_server.flags("authn"),
        "--jwks-signing-key",
        str(key),
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        str(users),
        "--device-poll-interval",
        "1",
    )
    kv = await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS)
    async with asyncio.timeout(15):
        while True:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await kv.get(subjects.JWKS_KEY)
                if entry.value and (snapshot := read_jwks(entry.value)).client is not None:
                    break
            await asyncio.sleep(0.05)
    return Authn(proc, snapshot)


@pytest.fixture
def client_for(openssh: OpenSSH) -> Any:
    """``client_for(sshd, bind=...)`` → an OpenSSH :class:`Client` trusting that server."""

    def make(sshd: Sshd, *, bind: str = CLIENT_IP) -> Client:
        return Client(openssh, sshd, bind=bind)

    return make
