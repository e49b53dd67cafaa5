"""Browser terminal tickets: issued from the dashboard by sshd's own decision, redeemed once by a
gateway peer over the bus (issue 20).

Real processes and protocols: authn's embedded provider signs alice and bob in through the
OIDC code flow, a policy replica with ``--gateway-url``, peers registered over REST (a server,
a gateway with a gateway setup key, a laptop), and the gateway's redemptions sent with the bus
identity policy minted for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.nats_jwt import Key, Prefix, new_key, write_creds
from meshssh_common.wire import (
    GatewayTicket,
    Heartbeat,
    TicketGrant,
    TicketRedeem,
    TicketRefusal,
)
from meshssh_testkit import NatsServer
from meshssh_testkit.dashboard import add_user, sign_in, start_dashboard_authn
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.ports import free_port

from .conftest import PolicyFactory, Replica, connect_as, register_rest

SERVER_KEY = "tickets-server-key-00001"
GATEWAY_KEY = "tickets-gateway-key-0001"
LAPTOP_KEY = "tickets-laptop-key-00001"
GATEWAY_URL = "https://gw.example.test:8443"
SEED = {
    "users": [{"id": "alice", "groups": ["ops"]}, {"id": "bob"}],
    "groups": [{"id": "servers"}, {"id": "ops"}, {"id": "gateways"}, {"id": "laptops"}],
    "setup_keys": [
        {"key": SERVER_KEY, "name": "servers", "expires_in": 0, "auto_groups": ["servers"]},
        {"key": LAPTOP_KEY, "name": "laptops", "expires_in": 0, "auto_groups": ["laptops"]},
        {
            "key": GATEWAY_KEY,
            "name": "gateways",
            "kind": "gateway",
            "expires_in": 0,
            "auto_groups": ["gateways"],
        },
    ],
    "policies": [
        {
            "id": "ops-ssh",
            "name": "ops log in as deploy",
            "rules": [
                {
                    "sources": ["gateways", "laptops"],
                    "destinations": ["servers"],
                    "protocol": "ssh",
                    "authorized_groups": {"ops": ["deploy", "root"]},
                }
            ],
        }
    ],
}


@dataclass
class Site:
    replica: Replica
    base: str
    server: str
    gateway: str
    gateway_nc: NATS
    laptop: str


async def _peer_nc(server: NatsServer, tmp_path: Path, key: Key, token: str) -> NATS:
    creds = tmp_path / f"{key.public[:12]}.creds"
    write_creds(creds, token, key.seed)
    return await connect_as(server, creds)


@pytest.fixture
async def site(
    policy: PolicyFactory,
    services: ServiceFactory,
    nats_server: NatsServer,
    nc: NATS,
    tmp_path: Path,
) -> AsyncIterator[Site]:
    started = await start_site(policy, services, nats_server, nc, tmp_path)
    try:
        yield started
    finally:
        await started.gateway_nc.close()


async def start_site(
    policy: PolicyFactory,
    services: ServiceFactory,
    nats_server: NatsServer,
    nc: NATS,
    tmp_path: Path,
    *authn_flags: str,
) -> Site:
    """authn (embedded provider, ``authn_flags`` added), policy, the peers; the server online."""
    users = tmp_path / "users.json"
    await add_user(users, "alice", "alice-password-0123", email="alice@example.com")
    await add_user(users, "bob", "bob-password-0123")
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(SEED))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    await start_dashboard_authn(services, nats_server, users, base, *authn_flags)
    replica = await policy.start(
        seed=seed, listen=f"127.0.0.1:{port}", gateway_url=GATEWAY_URL, admin_users=("alice",)
    )
    server = await register_rest(replica, "srv", "127.0.0.9", SERVER_KEY, ssh_port=22022)
    gateway_key = new_key(Prefix.USER)
    gateway = await register_rest(
        replica, "gw", "127.0.0.10", GATEWAY_KEY, server=False, nats_key=gateway_key
    )
    laptop = await register_rest(replica, "lap", "127.0.0.11", LAPTOP_KEY, server=False)
    gateway_nc = await _peer_nc(nats_server, tmp_path, gateway_key, gateway.nats_jwt)
    async with replica.client() as api, asyncio.timeout(30):
        while (await api.get("/api/v1/auth/config")).status_code != 200:
            await asyncio.sleep(0.05)  # until authn has published its issuer
        # the server is online (its heartbeat), so it may be connected to
        while not (await api.get(f"/api/v1/peers/{server.peer_id}")).json()["online"]:
            beat = Heartbeat(peer_id=server.peer_id, sent_at=time.time(), ssh_running=True)
            await nc.publish(subjects.heartbeat(server.peer_id), codec.encode(beat))
            await asyncio.sleep(0.05)
    return Site(replica, base, server.peer_id, gateway.peer_id, gateway_nc, laptop.peer_id)


def session_of(client: httpx.AsyncClient) -> str:
    return next(c.value for c in client.cookies.jar if c.name == "meshssh_session")


async def connect(
    site: Site, client: httpx.AsyncClient, csrf: str, local_user: str, peer: str = ""
) -> httpx.Response:
    return await client.post(
        f"{site.base}/ui/peers/{peer or site.server}/terminal",
        data={"csrf": csrf, "local_user": local_user},
    )


async def ticket_for(site: Site, client: httpx.AsyncClient, csrf: str) -> str:
    r = await connect(site, client, csrf, "deploy")
    assert r.status_code == 303, r.text
    return parse_qs(urlsplit(r.headers["location"]).query)["ticket"][0]


async def redeem(site: Site, ticket: str, session: str, gateway: str = "") -> Any:
    subject = subjects.gateway_ticket(gateway or site.gateway)
    req = TicketRedeem(ticket=ticket, session=session, browser_addr="192.0.2.7")
    reply = await site.gateway_nc.request(subject, codec.encode(req), timeout=5)
    return codec.decode(reply.data, TicketGrant | TicketRefusal)


async def stored(nc: NATS) -> dict[str, GatewayTicket]:
    kv = TypedKV(await open_bucket(nc.jetstream(), subjects.BUCKET_GATEWAY_TICKETS), GatewayTicket)
    return {k: e.value for k, e in (await kv.values()).items()}


async def test_a_user_gets_a_ticket_only_for_a_login_their_rules_allow(
    site: Site, nc: NATS
) -> None:
    alice, csrf = await sign_in(site.base, "alice", "alice-password-0123")
    bob, bob_csrf = await sign_in(site.base, "bob", "bob-password-0123")
    try:
        peers = (await alice.get(f"{site.base}/peers")).text
        assert 'aria-label="Connect to srv"' in peers
        assert re.search(
            r'<select id="lu-[^"]+" name="local_user">\s*<option value="deploy">', peers
        )
        assert "root" not in re.findall(r'<option value="([^"]+)"', peers)  # no --enable-ssh-root
        assert 'aria-label="Connect to gw"' not in peers  # runs no SSH server
        rows = {r.split('"', 1)[0]: r for r in peers.split('<tr id="peer-')[1:]}
        assert '<span class="chip">gateway</span>' in rows["gw"]
        assert '<span class="chip">gateway</span>' not in rows["srv"]
        page = (await alice.get(f"{site.base}/peers/{site.server}")).text
        assert 'aria-label="Connect to srv"' in page
        bobs = (await bob.get(f"{site.base}/peers/{site.server}")).text
        assert 'aria-label="Connect to srv"' not in bobs
        assert "your rules do not let you log in to srv" in bobs

        refusals = {
            "root": "root login is off on srv",
            "alice": "your rules do not let you log in to srv as alice",
            "bad/name": "is not a local user name",
        }
        for local_user, why in refusals.items():
            r = await connect(site, alice, csrf, local_user)
            assert r.status_code == 403, r.text
            assert why in r.text
        r = await connect(site, bob, bob_csrf, "deploy")  # a read-only user's own login: checked
        assert r.status_code == 403
        assert "your rules do not let you log in to srv" in r.text
        r = await connect(site, alice, csrf, "deploy", peer=site.gateway)
        assert r.status_code == 403
        assert "gw runs no SSH server" in r.text
        r = await alice.post(
            f"{site.base}/ui/peers/{site.server}/terminal", data={"local_user": "deploy"}
        )
        assert r.status_code == 403  # no CSRF token
        assert "CSRF" in r.text
        assert await stored(nc) == {}
        assert site.replica.metric("meshssh_policy_terminal_tickets_total", result="refused") == 5

        r = await connect(site, alice, csrf, "deploy")
        assert r.status_code == 303
        ticket = parse_qs(urlsplit(r.headers["location"]).query)["ticket"][0]
        assert len(ticket) == 43  # 32 random bytes
        shown = await alice.get(site.base + r.headers["location"])
        assert shown.status_code == 200
        assert f'data-ws="wss://gw.example.test:8443/v1/terminal?ticket={ticket}"' in shown.text
        assert "deploy@srv" in shown.text
        csp = shown.headers["content-security-policy"]
        assert "connect-src 'self' wss://gw.example.test:8443;" in csp
        assert "script-src 'self';" in csp
        # Only the session that asked may see the page; bob gets "connect again".
        assert (await bob.get(site.base + r.headers["location"])).status_code == 410

        tickets = await stored(nc)
        key = subjects.gateway_ticket_key(hashlib.sha256(ticket.encode()).hexdigest())
        assert list(tickets) == [key]  # kept only by its hash
        record = tickets[key]
        assert ticket not in codec.encode(record).decode()
        assert (record.sub, record.email, record.peer_id, record.local_user) == (
            "alice",
            "alice@example.com",
            site.server,
            "deploy",
        )
        assert record.session_hash == hashlib.sha256(session_of(alice).encode()).hexdigest()
        assert 59 <= record.expires_at - record.issued_at <= 60
        # The token is the one the mesh accepts (authn's exchange, sshd): the mesh's audience.
        claims = jwt.decode(record.idp_token, options={"verify_signature": False})
        assert claims["aud"] == "meshssh"
        assert claims["sub"] == "alice"
    finally:
        await alice.aclose()
        await bob.aclose()


async def test_a_gateway_redeems_a_ticket_once_with_the_session_that_asked_for_it(
    site: Site, nc: NATS
) -> None:
    alice, csrf = await sign_in(site.base, "alice", "alice-password-0123")
    try:
        session = session_of(alice)
        ticket = await ticket_for(site, alice, csrf)
        grant = await redeem(site, ticket, session)
        assert isinstance(grant, TicketGrant), grant
        assert (grant.sub, grant.peer_id, grant.peer_name, grant.local_user) == (
            "alice",
            site.server,
            "srv",
            "deploy",
        )
        assert (grant.mesh_ip, grant.ssh_port, grant.browser_addr) == (
            "127.0.0.9",
            22022,
            "127.0.0.1",
        )
        assert jwt.decode(grant.idp_token, options={"verify_signature": False})["aud"] == "meshssh"
        again = await redeem(site, ticket, session)
        assert again == TicketRefusal(reason="unknown_ticket", message=again.message)
        assert await stored(nc) == {}
        # The terminal page of a used ticket says so.
        used = await alice.get(f"{site.base}/ui/terminal?ticket={ticket}")
        assert used.status_code == 410
        assert "expired or was already used" in used.text

        # Another session's cookie burns the ticket: the right one cannot use it afterwards.
        other = await ticket_for(site, alice, csrf)
        wrong = await redeem(site, other, "x" * 43)
        assert isinstance(wrong, TicketRefusal)
        assert wrong.reason == "wrong_session"
        late = await redeem(site, other, session)
        assert isinstance(late, TicketRefusal)
        assert late.reason == "unknown_ticket"

        # A ticket past its expiry (the bucket's max age removes it soon after) is refused.
        kv = TypedKV(
            await open_bucket(nc.jetstream(), subjects.BUCKET_GATEWAY_TICKETS), GatewayTicket
        )
        old = "an-old-ticket-" + "o" * 29
        now = time.time()
        await kv.put(
            subjects.gateway_ticket_key(hashlib.sha256(old.encode()).hexdigest()),
            GatewayTicket(
                sub="alice",
                idp_token=grant.idp_token,
                peer_id=site.server,
                local_user="deploy",
                session_hash=hashlib.sha256(session.encode()).hexdigest(),
                issued_at=now - 61,
                expires_at=now - 1,
            ),
        )
        expired = await redeem(site, old, session)
        assert isinstance(expired, TicketRefusal)
        assert expired.reason == "expired"
        metric = site.replica.metric
        name = "meshssh_policy_ticket_redemptions_total"
        assert metric(name, result="granted") == 1
        assert metric(name, result="unknown_ticket") == 2
        assert metric(name, result="wrong_session") == 1
        assert metric(name, result="expired") == 1
    finally:
        await alice.aclose()


async def test_only_a_gateway_peer_may_redeem(site: Site, nc: NATS) -> None:
    alice, csrf = await sign_in(site.base, "alice", "alice-password-0123")
    try:
        ticket = await ticket_for(site, alice, csrf)
        # The bus already keeps a plain peer off the subject (libs/common test_bus_auth);
        # policy refuses it too, here asked by the admin identity on the laptop's behalf.
        for who in (site.laptop, site.server, "nosuch"):
            req = TicketRedeem(ticket=ticket, session=session_of(alice))
            msg = await nc.request(subjects.gateway_ticket(who), codec.encode(req), timeout=5)
            refused = codec.decode(msg.data, TicketGrant | TicketRefusal)
            assert isinstance(refused, TicketRefusal)
            assert refused.reason == "not_gateway"
        assert len(await stored(nc)) == 1  # a refused requester does not use the ticket up
        grant = await redeem(site, ticket, session_of(alice))
        assert isinstance(grant, TicketGrant)
        metric = site.replica.metric(
            "meshssh_policy_ticket_redemptions_total", result="not_gateway"
        )
        assert metric == 3
    finally:
        await alice.aclose()


async def test_a_sign_in_older_than_the_mesh_accepts_tokens_must_be_renewed_first(
    policy: PolicyFactory,
    services: ServiceFactory,
    nats_server: NatsServer,
    nc: NATS,
    tmp_path: Path,
) -> None:
    # The mesh accepts tokens 20 s after their iat: too little left for a ticket's journey.
    site = await start_site(policy, services, nats_server, nc, tmp_path, "--max-token-age", "20")
    alice, csrf = await sign_in(site.base, "alice", "alice-password-0123")
    try:
        r = await connect(site, alice, csrf, "deploy")
        assert r.status_code == 403
        assert "Your sign-in is too old for a terminal" in r.text
        assert f'href="/auth/login?next=/peers/{site.server}"' in r.text
        assert await stored(nc) == {}
        metric = site.replica.metric(
            "meshssh_policy_terminal_tickets_total", result="sign_in_again"
        )
        assert metric == 1
    finally:
        await alice.aclose()
        await site.gateway_nc.close()
