"""The real remote mesh peer for the client tests: a ``meshssh-sshd`` process.

nats-server (the test's), this peer's network map and a test issuer's keys in KV, and
meshssh-sshd on 127.0.0.2 (the loopback mesh) with the switches a test asks for
(:class:`PeerFeatures` maps to sshd's ``--enable-ssh-*`` and ``--disable-ssh-auth`` flags).
Who connected from where is read back from the real audit stream (:func:`audit_events`).
The identity provider is a signing key the test holds (a third-party issuer).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from meshssh_common import codec, subjects
from meshssh_common.host_keys import load_or_create_host_key
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.ssh_auth import build_table
from meshssh_common.wire import (
    AuditEvent,
    FirewallRule,
    JwksSnapshot,
    JwtConfig,
    NetworkMap,
    PeerConfig,
    SourcePeer,
)
from meshssh_testkit.netmaps import put_map
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import ServiceProcess, script

PEER_NAME = "demo-server"
PEER_IP = "127.0.0.2"
LOCAL_IP = "127.0.0.3"
ISSUER = "https://idp.example.test"
AUDIENCE = "meshssh"
SERVER_ID = "server-1"
LAPTOP = SourcePeer(id="laptop-1", name="demo-laptop", mesh_ip=LOCAL_IP)


@dataclass
class Issuer:
    """The third-party identity provider: its signing key and its tokens."""

    key: Ed25519PrivateKey
    kid: str = "test-k1"

    def jwks(self) -> tuple[dict[str, Any], ...]:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        return ({**jwk, "kid": self.kid, "use": "sig", "alg": "EdDSA"},)

    def mint(self, sub: str, *, age: float = 0, ttl: float = 300, aud: str = AUDIENCE) -> str:
        now = time.time() - age
        claims = {"iss": ISSUER, "aud": aud, "sub": sub, "iat": int(now), "exp": int(now + ttl)}
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})


@dataclass(frozen=True)
class PeerFeatures:
    """What the peer allows; each switch is one of meshssh-sshd's flags."""

    jwt: bool = True
    sftp: bool = True
    local_forwarding: bool = True
    remote_forwarding: bool = True
    agent_forwarding: bool = True
    root: bool = True

    def flags(self) -> list[str]:
        given = [
            (not self.jwt, "--disable-ssh-auth"),
            (self.sftp, "--enable-ssh-sftp"),
            (self.local_forwarding, "--enable-ssh-local-port-forwarding"),
            (self.remote_forwarding, "--enable-ssh-remote-port-forwarding"),
            (self.agent_forwarding, "--enable-ssh-agent-forwarding"),
            (self.root, "--enable-ssh-root"),
        ]
        return [flag for on, flag in given if on]


NO_FEATURES = PeerFeatures(
    sftp=False, local_forwarding=False, remote_forwarding=False, agent_forwarding=False, root=False
)


def server_map(*, sources: tuple[str, ...] = ("127.0.0.0/8",), jwt: bool = True) -> NetworkMap:
    """This peer's map: SSH on, ``sources`` let in on 22022, the token user ``alice-id`` may
    log in as any local user."""
    return NetworkMap(
        serial=time.time_ns() // 1000,
        peer=PeerConfig(
            id=SERVER_ID,
            name=PEER_NAME,
            mesh_ip=PEER_IP,
            mesh_prefix="127.0.0.0/8",
            ssh_enabled=True,
            jwt=JwtConfig(issuer=ISSUER, audiences=(AUDIENCE,)) if jwt else None,
        ),
        firewall_rules=(
            FirewallRule(
                sources=sources, protocol="tcp", action="accept", policy_id="pol-1", port="22022"
            ),
        ),
        ssh_auth=build_table("sub", [("alice-id", "*")]),
        source_peers=(LAPTOP,),
    )


@dataclass
class RealPeer:
    """A running meshssh-sshd: where it listens, its host key, the issuer it trusts."""

    process: ServiceProcess
    port: int
    host_key_line: str
    issuer: Issuer
    nc: NATS
    jwt: bool

    async def stop(self) -> None:
        """Stop the server (SIGTERM; the ``services`` fixture would stop it after the test)."""
        await self.process.stop()

    async def revoke(self, *, sources: tuple[str, ...]) -> None:
        """Publish a newer map that lets in only ``sources``: live connections from elsewhere
        are closed with "access revoked"."""
        await put_map(self.nc, server_map(sources=sources, jwt=self.jwt))


async def start_sshd(
    nc: NATS,
    nats_url: str,
    services: ServiceFactory,
    workdir: Path,
    features: PeerFeatures = PeerFeatures(),
    *,
    sources: tuple[str, ...] = ("127.0.0.0/8",),
) -> RealPeer:
    """Put the JWKS and the map in KV, start meshssh-sshd on 127.0.0.2:0, return it ready."""
    issuer = Issuer(Ed25519PrivateKey.generate())
    kv = TypedKV(await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS), JwksSnapshot)
    await kv.put(
        subjects.JWKS_KEY,
        JwksSnapshot(
            jwt=JwtConfig(issuer=ISSUER, audiences=(AUDIENCE,)),
            keys=issuer.jwks(),
            fetched_at=time.time(),
            source="test",
        ),
    )
    await put_map(nc, server_map(sources=sources, jwt=features.jwt))
    key_path = workdir / "sshd" / "ssh_host_ed25519_key"
    host_key = load_or_create_host_key(key_path)
    sshd = await services.start(
        script("meshssh-sshd"),
        "--peer-id",
        SERVER_ID,
        "--listen",
        f"{PEER_IP}:0",
        "--host-key",
        str(key_path),
        "--nats-url",
        nats_url,
        *features.flags(),
    )
    found = re.search(r"ssh listening.*address=[\d.]+:(\d+)", sshd.output())
    assert found, sshd.output()
    return RealPeer(sshd, int(found[1]), host_key.public_line, issuer, nc, features.jwt)


async def audit_events(
    nc: NATS, until: Callable[[list[AuditEvent]], bool] = lambda _: True, timeout: float = 10
) -> list[AuditEvent]:
    """Every audit event in the stream, read again until ``until`` holds (within ``timeout``)."""
    js = nc.jetstream()
    events: list[AuditEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                info = await js.stream_info(subjects.AUDIT_STREAM)
            except NotFoundError:  # nothing audited yet
                await asyncio.sleep(0.1)
                continue
            sub = await js.subscribe(subjects.AUDIT_SUBJECTS, ordered_consumer=True)
            try:
                events = [
                    codec.decode((await sub.next_msg(timeout=5)).data, AuditEvent)
                    for _ in range(info.state.messages)
                ]
            finally:
                await sub.unsubscribe()
            if until(events):
                return events
            await asyncio.sleep(0.1)


def kinds(*wanted: str) -> Callable[[list[AuditEvent]], bool]:
    """An ``until`` for :func:`audit_events`: every kind in ``wanted`` has been seen."""
    return lambda events: set(wanted) <= {e.kind for e in events}


def logins(events: list[AuditEvent]) -> list[AuditEvent]:
    """The authentication events (accepted or rejected): the tokens the peer was shown."""
    return [e for e in events if e.kind in ("auth-accepted", "auth-rejected")]
