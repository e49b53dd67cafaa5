"""The bus's authentication and permissions against a real nats-server with auth on.

Every refusal is seen as the server's own permissions violation (nats-py's ``error_cb`` gets
``permissions violation for ...``), never inferred from a timeout alone. The identities are
the ones deployments use: ``BusKeys`` service creds and peer creds minted with
``peer_permissions``, as policy mints them at registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig

from meshssh_common import subjects
from meshssh_common.bus_keys import BusKeys
from meshssh_common.bus_permissions import admin_permissions, gateway_permissions, inbox_prefix
from meshssh_common.connection import connect_nats
from meshssh_common.errors import ConfigError
from meshssh_common.nats_jwt import Prefix, new_key, read_creds, user_jwt, write_creds
from meshssh_common.recording_stream import ensure_recordings_stream
from meshssh_testkit import NatsServer

NETMAPS = subjects.BUCKET_NETMAPS
AUTHN = subjects.BUCKET_AUTHN
OWN_MAP = f"$KV.{NETMAPS}.peer.p1"
OTHER_MAP = f"$KV.{NETMAPS}.peer.p2"
SNAP = "0123456789abcdef0123456789abcdef"  # a snapshot's name: 16 bytes of its hash, in hex
OWN_SNAPSHOT = f"$KV.{NETMAPS}.snap.p1.{SNAP}"
OTHER_SNAPSHOT = f"$KV.{NETMAPS}.snap.p2.{SNAP}"
SIGNING_KEYS = f"$KV.{AUTHN}.{subjects.AUTHN_SIGNING_KEYS_KEY}"


def direct_get(bucket: str, key_subject: str) -> str:
    """The subject of a direct get of one KV key (no consumer, no stream info)."""
    return f"$JS.API.DIRECT.GET.KV_{bucket}.{key_subject}"


class Client:
    """A connected identity and the server's complaints about what it tried."""

    def __init__(self) -> None:
        self.nc = NATS()
        self.errors: list[str] = []
        self._changed = asyncio.Event()

    async def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))
        self._changed.set()

    async def refused(self, kind: str, subject: str, timeout: float = 10) -> None:
        """Wait for the server's violation of ``kind`` ("publish", "subscription") on ``subject``.

        Raises:
            AssertionError: none came (with what did come).
        """
        want = f'permissions violation for {kind} to "{subject.lower()}"'
        try:
            async with asyncio.timeout(timeout):
                while not any(want in e for e in self.errors):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {want!r}; errors: {self.errors}") from None

    def clean(self) -> None:
        """Assert the server refused nothing so far."""
        violations = [e for e in self.errors if "violation" in e]
        assert violations == [], violations


async def request_when_heard(nc: NATS, subject: str, data: bytes, timeout: float = 10) -> Msg:
    """A request, sent again while the server answers "no responders" (bounded by ``timeout``).

    The responder flushed its SUB before this is called, yet a CI run once (in about a thousand)
    got "no responders" at once: the test is about who may publish where, not about how soon a
    subscription is seen, so it waits for the interest instead of failing on it.
    """
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await nc.request(subject, data, timeout=timeout)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def connected(server: NatsServer, identity: str | Path) -> AsyncIterator[Client]:
    client = Client()
    await client.nc.connect(
        server.url,
        **server.client_options(identity),
        error_cb=client.on_error,
        allow_reconnect=False,
    )
    try:
        yield client
    finally:
        await client.nc.close()


async def refused_connect(url: str, **options: Any) -> str:
    """The error of a connection the server refuses (the client is closed either way)."""
    nc = NATS()
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    try:
        with pytest.raises((nats.errors.Error, OSError)) as refused:
            await nc.connect(url, allow_reconnect=False, error_cb=on_error, **options)
    finally:
        # nats-py's close() can hang after a failed TLS handshake: bounded
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await nc.close()
    return str(refused.value)


@pytest.fixture
async def bus(nats_server: NatsServer, nc: NATS) -> NatsServer:
    """The buckets a deployment has, made and filled by the admin identity."""
    js = nc.jetstream()
    netmaps = await js.create_key_value(KeyValueConfig(bucket=NETMAPS, direct=True))
    await netmaps.put("peer.p1", b"map of p1")
    await netmaps.put("peer.p2", b"map of p2")
    await netmaps.put(f"snap.p1.{SNAP}", b"snapshot of p1")
    await netmaps.put(f"snap.p2.{SNAP}", b"snapshot of p2")
    jwks = await js.create_key_value(KeyValueConfig(bucket=subjects.BUCKET_JWKS, direct=True))
    await jwks.put(subjects.JWKS_KEY, b"jwks")
    authn = await js.create_key_value(KeyValueConfig(bucket=AUTHN, direct=True))
    await authn.put(subjects.AUTHN_SIGNING_KEYS_KEY, b"private signing keys")
    for bucket in (subjects.BUCKET_AUTHN_DEVICES, subjects.BUCKET_PEERS):
        await js.create_key_value(KeyValueConfig(bucket=bucket, direct=True))
    return nats_server


# -- who may connect -----------------------------------------------------------------------


async def test_an_anonymous_connection_is_refused(nats_server: NatsServer) -> None:
    error = await refused_connect(nats_server.url)
    assert "Authorization Violation" in error
    assert any("authentication error" in line for line in nats_server.log)


async def test_creds_from_another_operator_are_refused_and_connect_nats_says_so(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    stranger = BusKeys.create(tmp_path / "other-bus").creds("admin")
    error = await refused_connect(nats_server.url, user_credentials=str(stranger))
    assert "Authorization Violation" in error
    # a service given refused creds stops with a clear error instead of retrying forever
    with pytest.raises(ConfigError, match="refused"):
        async with asyncio.timeout(30):
            await connect_nats(nats_server.url, name="stranger", creds=stranger)


async def test_creds_whose_seed_is_not_the_jwts_key_are_refused_before_connecting(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    assert nats_server.keys is not None
    owner, thief = new_key(Prefix.USER), new_key(Prefix.USER)
    jwt = nats_server.keys.mint(owner.public, name="p1", permissions=admin_permissions())
    forged = tmp_path / "forged.creds"
    write_creds(forged, jwt, thief.seed)
    with pytest.raises(ValueError, match="seed does not belong"):
        read_creds(forged)
    with pytest.raises(ConfigError, match="--nats-creds"):
        await connect_nats(nats_server.url, name="forged", creds=forged)
    # and the server itself refuses the nonce signed with the wrong seed
    error = await refused_connect(nats_server.url, user_credentials=str(forged))
    assert "Authorization Violation" in error


async def test_a_jwt_signed_by_a_key_the_account_does_not_trust_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    assert nats_server.keys is not None
    rogue_signer, user = new_key(Prefix.ACCOUNT), new_key(Prefix.USER)
    jwt = user_jwt(
        rogue_signer,
        user.public,
        name="rogue",
        account=nats_server.keys.account,
        permissions={"pub": {"allow": [">"]}, "sub": {"allow": [">"]}},
    )
    rogue = tmp_path / "rogue.creds"
    write_creds(rogue, jwt, user.seed)
    assert "Authorization Violation" in await refused_connect(
        nats_server.url, user_credentials=str(rogue)
    )


# -- a peer: what it may do -----------------------------------------------------------------


async def test_a_peer_reads_its_own_map_by_direct_get_and_by_subscription(
    bus: NatsServer, nc: NATS
) -> None:
    async with connected(bus, bus.peer_creds("p1")) as peer:
        updates: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_update(msg: Msg) -> None:
            await updates.put(msg.data)

        await peer.nc.subscribe(OWN_MAP, cb=on_update)
        await peer.nc.flush()
        got = await peer.nc.request(direct_get(NETMAPS, OWN_MAP), b"", timeout=5)
        assert got.data == b"map of p1"
        got = await peer.nc.request(direct_get(NETMAPS, OWN_SNAPSHOT), b"", timeout=5)
        assert got.data == b"snapshot of p1"  # what a delta in its map names
        jwks = f"$KV.{subjects.BUCKET_JWKS}.{subjects.JWKS_KEY}"
        got = await peer.nc.request(direct_get(subjects.BUCKET_JWKS, jwks), b"", timeout=5)
        assert got.data == b"jwks"
        await (await nc.jetstream().key_value(NETMAPS)).put("peer.p1", b"map 2 of p1")
        async with asyncio.timeout(10):
            assert await updates.get() == b"map 2 of p1"
        peer.clean()


async def test_a_peer_publishes_its_heartbeat(bus: NatsServer, nc: NATS) -> None:
    beats = await nc.subscribe(subjects.heartbeat("p1"))
    await nc.flush()
    async with connected(bus, bus.peer_creds("p1")) as peer:
        await peer.nc.publish(subjects.heartbeat("p1"), b"beat")
        await peer.nc.flush()
        try:
            beat = await beats.next_msg(timeout=10)
        except nats.errors.TimeoutError:
            raise AssertionError(
                f"no heartbeat; peer errors {peer.errors}; admin {nc.stats}; peer {peer.nc.stats}"
            ) from None
        assert beat.data == b"beat"
        peer.clean()


# -- a peer: what it is refused --------------------------------------------------------------


async def test_a_peer_cannot_read_another_peers_map(bus: NatsServer) -> None:
    async with connected(bus, bus.peer_creds("p1")) as peer:
        with pytest.raises(nats.errors.TimeoutError):
            await peer.nc.request(direct_get(NETMAPS, OTHER_MAP), b"", timeout=1)
        await peer.refused("publish", direct_get(NETMAPS, OTHER_MAP))
        await peer.nc.publish(direct_get(NETMAPS, OTHER_SNAPSHOT), b"", reply=peer.nc.new_inbox())
        await peer.refused("publish", direct_get(NETMAPS, OTHER_SNAPSHOT))
        await peer.nc.subscribe(OTHER_MAP)
        await peer.refused("subscription", OTHER_MAP)
        # nor the whole bucket through a consumer or the stream's info
        create = f"$JS.API.CONSUMER.CREATE.KV_{NETMAPS}"
        await peer.nc.publish(create, b"{}", reply=peer.nc.new_inbox())
        await peer.refused("publish", create)


async def test_a_peer_cannot_write_any_kv_key(bus: NatsServer, nc: NATS) -> None:
    async with connected(bus, bus.peer_creds("p1")) as peer:
        for subject in (
            OWN_MAP,  # not even its own map
            OWN_SNAPSHOT,
            OTHER_MAP,
            f"$KV.{subjects.BUCKET_JWKS}.{subjects.JWKS_KEY}",
            f"$KV.{subjects.BUCKET_PEERS}.p1",
            SIGNING_KEYS,
        ):
            await peer.nc.publish(subject, b"forged")
            await peer.refused("publish", subject)
    own = await (await nc.jetstream().key_value(NETMAPS)).get("peer.p1")
    assert own.value == b"map of p1"


async def test_a_peer_cannot_read_the_authn_bucket(bus: NatsServer) -> None:
    async with connected(bus, bus.peer_creds("p1")) as peer:
        inbox = peer.nc.new_inbox()
        for subject in (
            direct_get(AUTHN, SIGNING_KEYS),
            f"$JS.API.CONSUMER.CREATE.KV_{AUTHN}",
            f"$JS.API.STREAM.INFO.KV_{AUTHN}",
            f"$JS.API.STREAM.MSG.GET.KV_{AUTHN}",
        ):
            await peer.nc.publish(subject, b"{}", reply=inbox)
            await peer.refused("publish", subject)
        await peer.nc.subscribe(f"$KV.{AUTHN}.>")
        await peer.refused("subscription", f"$KV.{AUTHN}.>")


async def test_a_peer_cannot_subscribe_to_everything_or_to_another_inbox(
    bus: NatsServer,
) -> None:
    policy_inbox = inbox_prefix(read_creds(bus.creds("policy")).public_key) + ".>"
    async with connected(bus, bus.peer_creds("p1")) as peer:
        for subject in (">", policy_inbox, "_INBOX.>", "meshssh.>"):
            await peer.nc.subscribe(subject)
            await peer.refused("subscription", subject)


@pytest.mark.parametrize("subject", [subjects.AUTHN_DEVICE_POLL_ALL, subjects.POLICY_META])
async def test_a_peer_cannot_join_a_services_queue_group(bus: NatsServer, subject: str) -> None:
    async with connected(bus, bus.peer_creds("p1")) as peer:
        await peer.nc.subscribe(subject, queue="authn")
        await peer.refused("subscription", subject)  # '... using queue "authn"'


async def test_a_peer_cannot_speak_for_another_peer(bus: NatsServer, nc: NATS) -> None:
    heard = await nc.subscribe("meshssh.>")
    await nc.flush()
    async with connected(bus, bus.peer_creds("p1")) as peer:
        for subject in (
            subjects.heartbeat("p2"),
            subjects.device_start("p2"),  # a browser check whose token would be for p2
            subjects.device_poll("p2"),
            subjects.audit_event("auth-accepted", "p2"),
            subjects.sshd_sessions("p2"),
        ):
            await peer.nc.publish(subject, b"forged")
            await peer.refused("publish", subject)
    with pytest.raises(nats.errors.TimeoutError):
        await heard.next_msg(timeout=0.5)  # nothing got through


async def test_a_peer_stores_recordings_on_its_own_subjects_only(bus: NatsServer, nc: NATS) -> None:
    await ensure_recordings_stream(nc.jetstream())
    async with connected(bus, bus.peer_creds("p1")) as peer:
        ack = await peer.nc.jetstream().publish(subjects.recording("p1", "s1"), b"cast", timeout=5)
        assert ack.stream == subjects.RECORDINGS_STREAM
        peer.clean()
        forged = subjects.recording("p2", "s1")
        await peer.nc.publish(forged, b"forged")
        await peer.refused("publish", forged)
        # nor read other recordings back
        read = f"$JS.API.STREAM.MSG.GET.{subjects.RECORDINGS_STREAM}"
        await peer.nc.publish(read, b"{}", reply=peer.nc.new_inbox())
        await peer.refused("publish", read)
    info = await nc.jetstream().stream_info(subjects.RECORDINGS_STREAM, subjects_filter=">")
    assert info.state.subjects == {subjects.recording("p1", "s1"): 1}


async def test_a_peer_cannot_create_a_stream(bus: NatsServer) -> None:
    async with connected(bus, bus.peer_creds("p1")) as peer:
        config = json.dumps({"name": "EVIL", "subjects": ["meshssh.>"]}).encode()
        with pytest.raises(nats.errors.TimeoutError):
            await peer.nc.request("$JS.API.STREAM.CREATE.EVIL", config, timeout=1)
        await peer.refused("publish", "$JS.API.STREAM.CREATE.EVIL")


# -- the services keep to their own ----------------------------------------------------------


async def test_policy_cannot_read_authns_buckets(bus: NatsServer) -> None:
    async with connected(bus, "policy") as policy:
        inbox = policy.nc.new_inbox()
        for bucket in (AUTHN, subjects.BUCKET_AUTHN_DEVICES):
            for subject in (
                direct_get(bucket, f"$KV.{bucket}.x"),
                f"$JS.API.STREAM.INFO.KV_{bucket}",
                f"$JS.API.CONSUMER.CREATE.KV_{bucket}",
            ):
                await policy.nc.publish(subject, b"{}", reply=inbox)
                await policy.refused("publish", subject)
            await policy.nc.subscribe(f"$KV.{bucket}.>")
            await policy.refused("subscription", f"$KV.{bucket}.>")


async def test_authn_cannot_write_peers_or_maps(bus: NatsServer) -> None:
    async with connected(bus, "authn") as authn:
        inbox = authn.nc.new_inbox()
        for subject in (
            f"$KV.{subjects.BUCKET_PEERS}.p1",
            OWN_MAP,
            f"$JS.API.STREAM.PURGE.KV_{NETMAPS}",
            f"$JS.API.STREAM.DELETE.KV_{subjects.BUCKET_PEERS}",
        ):
            await authn.nc.publish(subject, b"forged", reply=inbox)
            await authn.refused("publish", subject)


# -- TLS -------------------------------------------------------------------------------------


async def test_tls_needs_the_bus_ca_and_refuses_plaintext(tmp_path: Path) -> None:
    server = await NatsServer.start(tmp_path / "js", tls=True)
    try:
        assert server.url.startswith("tls://")
        assert server.ca is not None
        nc = await connect_nats(
            server.url, name="tls", creds=server.creds("admin"), ca=server.ca, retry_initial=False
        )
        try:
            assert nc.is_connected
        finally:
            await nc.close()
        # without the CA, the server's certificate does not verify
        error = await refused_connect(server.url, user_credentials=str(server.creds("admin")))
        assert "CERTIFICATE_VERIFY_FAILED" in error
        # a client that speaks plaintext gets the connection closed
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            async with asyncio.timeout(10):
                info = json.loads((await reader.readline()).removeprefix(b"INFO "))
                assert info["tls_required"] is True
                writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
                await writer.drain()
                assert await reader.read() == b""  # closed, never a PONG
        finally:
            writer.close()
    finally:
        await server.stop()


async def test_a_peer_requests_token_exchange_for_its_own_id_only(bus: NatsServer) -> None:
    async with connected(bus, "authn") as authn, connected(bus, bus.peer_creds("p1")) as peer:
        seen: list[str] = []

        async def answer(msg: Msg) -> None:
            seen.append(msg.subject)
            await msg.respond(b"per-peer token")

        await authn.nc.subscribe(subjects.AUTHN_TOKEN_EXCHANGE_ALL, queue="authn", cb=answer)
        await authn.nc.flush()
        got = await request_when_heard(peer.nc, subjects.token_exchange("p1"), b"exchange")
        assert got.data == b"per-peer token"
        assert seen == [subjects.token_exchange("p1")]  # authn reads the requester from it
        peer.clean()
        await peer.nc.publish(subjects.token_exchange("p2"), b"exchange as p2")
        await peer.refused("publish", subjects.token_exchange("p2"))
        await authn.nc.flush()
        assert seen == [subjects.token_exchange("p1")]
        authn.clean()


def gateway_creds(server: NatsServer, peer_id: str, tmp_path: Path) -> Path:
    """A gateway peer's identity, as policy mints it for a peer of a gateway setup key."""
    assert server.keys is not None
    user = new_key(Prefix.USER)
    perms = gateway_permissions(peer_id, inbox_prefix(user.public))
    jwt = server.keys.mint(user.public, name=f"peer-{peer_id}", permissions=perms, ttl=3600)
    path = tmp_path / f"gateway-{peer_id}.creds"
    write_creds(path, jwt, user.seed)
    return path


async def test_only_a_gateway_peer_redeems_tickets_and_only_on_its_own_subject(
    bus: NatsServer, tmp_path: Path
) -> None:
    gateway_id = gateway_creds(bus, "g1", tmp_path)
    async with (
        connected(bus, "policy") as policy,
        connected(bus, bus.peer_creds("p1")) as peer,
        connected(bus, gateway_id) as gateway,
    ):
        seen: list[str] = []

        async def answer(msg: Msg) -> None:
            seen.append(msg.subject)
            await msg.respond(b"grant")

        await policy.nc.subscribe(subjects.GATEWAY_TICKET_ALL, queue="policy", cb=answer)
        await policy.nc.flush()
        got = await request_when_heard(gateway.nc, subjects.gateway_ticket("g1"), b"redeem")
        assert got.data == b"grant"  # the reply reached the gateway's own inbox
        gateway.clean()
        # A plain peer may not redeem at all, not even on its own id; a gateway only on its own.
        await peer.nc.publish(subjects.gateway_ticket("p1"), b"not a gateway")
        await peer.refused("publish", subjects.gateway_ticket("p1"))
        await gateway.nc.publish(subjects.gateway_ticket("g2"), b"as another gateway")
        await gateway.refused("publish", subjects.gateway_ticket("g2"))
        # Nobody but policy touches the tickets bucket (it holds users' IdP tokens).
        tickets = subjects.BUCKET_GATEWAY_TICKETS
        for client in (peer, gateway):
            await client.nc.publish(f"$KV.{tickets}.t.forged", b"forged ticket")
            await client.refused("publish", f"$KV.{tickets}.t.forged")
            get = direct_get(tickets, f"$KV.{tickets}.t.x")
            await client.nc.publish(get, b"")
            await client.refused("publish", get)
        await policy.nc.flush()
        assert seen == [subjects.gateway_ticket("g1")]
        policy.clean()
