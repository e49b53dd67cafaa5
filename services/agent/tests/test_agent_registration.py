"""Registration over REST, the peer's own NATS key, and renewal of its JWT (issue 14).

The management plane is the real meshssh-policy (testkit ``Management``, signing with the
test nats-server's bus keys, auth on); the agent reaches it through a recording HTTP front
(``registration_front``), so each test sees exactly what went over the wire. Where a test
watches renewals and expiries, the front shortens the JWTs policy issues to a few seconds
(policy's shortest lifetime is 60 s).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from registration_front import RegistrationFront

from meshssh_common.nats_jwt import decode_claims, key_from_seed, read_creds
from meshssh_common.signed_doc import PINS_FILE, Signer, read_pins
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.peer_agent import AgentProcess, Status, pid_alive
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import script


@pytest.fixture
async def policy(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, services: ServiceFactory
) -> Management:
    return await Management.start(services, nats_server, nc, tmp_path / "policy")


@pytest.fixture
async def front(policy: Management) -> AsyncIterator[RegistrationFront]:
    front = await RegistrationFront.start(policy.api, policy.bus)
    try:
        yield front
    finally:
        await front.stop()


async def start_agent(
    state: Path, nats_url: str, url: str, *flags: str, key: str = LAPTOP_KEY, name: str = "laptop"
) -> AgentProcess:
    args = [
        "--mesh-ip",
        "127.0.0.3" if key == LAPTOP_KEY else "127.0.0.2",
        "--name",
        name,
        "--nats-url",
        nats_url,
        "--management-url",
        url,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--sshd-bin",
        script("meshssh-sshd"),
        *flags,
    ]
    if key:
        args += ["--setup-key", key]
    return await AgentProcess.start(state, *args)


def running(*names: str) -> Callable[[Status], bool]:
    def check(s: Status) -> bool:
        states = {c["name"]: c["state"] for c in s["children"]}
        return all(states[name] == "running" for name in names)

    return check


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {timeout}s: {what}")


async def metric(ops_url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{ops_url}/metrics")).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def test_the_agent_sends_its_nats_public_key_never_the_seed_and_keeps_it_across_restarts(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront
) -> None:
    state = tmp_path / "state"
    agent = await start_agent(state, nats_url, front.url)
    try:
        first = await agent.wait_status(lambda s: s["registered"] and s["nats_connected"])
    finally:
        assert await agent.stop() == 0
    key = key_from_seed((state / "nats.nk").read_text())
    [req] = front.requests()
    assert req.nats_key == key.public
    assert req.setup_key == LAPTOP_KEY
    assert (req.meta.ssh_port, req.meta.relay_port) == (first["ssh_port"], first["relay_port"])
    assert key.seed.encode() not in front.bodies[0]
    assert key.seed[1:].encode() not in front.bodies[0]  # not even without its prefix letter
    for name in ("nats.nk", "nats.creds", "peer.json"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    creds = read_creds(state / "nats.creds")
    assert creds.public_key == key.public
    claims = decode_claims(creds.jwt)
    assert claims["nats"]["issuer_account"] == policy.bus.account  # signed for policy's account
    assert creds.expires_at is not None
    assert creds.expires_at > time.time() + 3600  # policy's default lifetime: 12 h

    # A restart registers with the stored credential and the same key: no setup key needed.
    # A --nats-creds of its own is ignored, and it says so: the identity is registration's.
    other = tmp_path / "someone-elses.creds"
    agent = await start_agent(state, nats_url, front.url, "--nats-creds", str(other), key="")
    try:
        again = await agent.wait_status(lambda s: s["registered"] and s["nats_connected"])
    finally:
        assert await agent.stop() == 0
    assert "--nats-creds / MESHSSH_NATS_CREDS ignored" in agent.output()
    assert again["peer_id"] == first["peer_id"]
    last = front.requests()[-1]
    assert (last.setup_key, last.peer_id, last.nats_key) == ("", first["peer_id"], key.public)
    assert last.credential


async def test_a_refused_credential_registers_afresh_with_the_setup_key_and_a_new_key(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront
) -> None:
    state = tmp_path / "state"
    agent = await start_agent(state, nats_url, front.url)
    try:
        first = await agent.wait_status(lambda s: s["registered"])
    finally:
        assert await agent.stop() == 0
    old = key_from_seed((state / "nats.nk").read_text()).public
    await policy.delete_peer("laptop")  # the operator removes it while it is down

    agent = await start_agent(state, nats_url, front.url)
    try:
        second = await agent.wait_status(lambda s: s["registered"] and s["nats_connected"])
    finally:
        assert await agent.stop() == 0
    assert front.answers == [200, 403, 200]
    _, refused, fresh = front.requests()
    assert (refused.peer_id, refused.nats_key, refused.setup_key) == (first["peer_id"], old, "")
    assert fresh.setup_key == LAPTOP_KEY
    assert fresh.nats_key != old  # the old key was revoked with the old peer
    new = key_from_seed((state / "nats.nk").read_text()).public
    assert new == fresh.nats_key == read_creds(state / "nats.creds").public_key
    assert second["peer_id"] != first["peer_id"]


async def test_an_unanswering_management_is_retried_and_shown_and_a_refusal_is_final(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront
) -> None:
    front.down = True
    agent = await start_agent(tmp_path / "state", nats_url, front.url)
    try:
        status = await agent.wait_status(lambda s: "not answering" in s["register_error"])
        assert not status["registered"]
        assert not status["nats_connected"]  # no bus identity yet: not even trying
        assert not (tmp_path / "state" / "nats.creds").exists()
        await until(lambda: len(front.bodies) >= 3, "retried")
        front.down = False
        status = await agent.wait_status(lambda s: s["registered"] and s["nats_connected"])
        assert status["register_error"] == ""
    finally:
        assert await agent.stop() == 0

    refused = await start_agent(tmp_path / "other", nats_url, front.url, key="not-a-setup-key")
    async with asyncio.timeout(20):
        code = await refused.proc.wait()
    await refused.stop()
    assert code == 1
    assert "registration refused" in refused.output()
    assert front.answers[-1] == 403
    assert not (tmp_path / "other" / "nats.creds").exists()

    # A URL that is no management plane (a 404 page, not policy's JSON error) is no outage.
    wrong = await start_agent(tmp_path / "third", nats_url, front.url + "/not-policy")
    async with asyncio.timeout(20):
        code = await wrong.proc.wait()
    await wrong.stop()
    assert code == 1
    assert "registration refused: http_404: Not Found" in wrong.output()


async def test_renewals_rewrite_the_creds_and_keep_agent_and_children_on_an_auth_on_bus(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront
) -> None:
    # The testkit's nats-server has auth on: a connection still on an expired JWT is closed.
    front.ttl = 3.0
    state = tmp_path / "state"
    agent = await start_agent(
        state, nats_url, front.url, "--allow-server-ssh", key=SERVER_KEY, name="server"
    )
    try:
        status = await agent.wait_status(running("sshd", "relay"))
        first = read_creds(state / "nats.creds")
        assert first.expires_at is not None
        # Past three lifetimes of the first JWT: every connection made with the creds file
        # (the agent's and both children's) must have taken up the renewed ones.
        await until(lambda: time.time() > first.expires_at + 7, "three lifetimes", timeout=15)
        status = await agent.wait_status(lambda s: s["nats_connected"] and running("sshd")(s))
        now = read_creds(state / "nats.creds")
        assert now.public_key == first.public_key  # renewed for the same key
        assert now.expires_at is not None
        assert now.expires_at > time.time()
        renewals = [r for r in front.requests() if r.peer_id]
        assert len(renewals) >= 3
        assert all(not r.setup_key and r.nats_key == first.public_key for r in renewals)
        ok = 'meshssh_agent_creds_renewals_total{outcome="ok"}'
        assert await metric(status["ops_url"], ok) >= 3
        assert all(c["restarts"] == 0 for c in status["children"])
        assert "authentication expired" not in agent.output().lower()
        assert agent.output().count("creds file renewed; reconnecting") >= 3 * 3  # 3 processes
    finally:
        assert await agent.stop() == 0


async def test_a_refused_renewal_stops_the_children_and_the_agent_with_exit_1(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront
) -> None:
    front.ttl = 4.0
    agent = await start_agent(
        tmp_path / "state", nats_url, front.url, "--allow-server-ssh", key=SERVER_KEY, name="srv"
    )
    try:
        status = await agent.wait_status(running("sshd", "relay"))
        pids = [c["pid"] for c in status["children"]]
        await policy.delete_peer("srv")  # the operator removes the peer
        async with asyncio.timeout(20):
            code = await agent.proc.wait()
        assert code == 1
        assert "management refused to renew the NATS credentials" in agent.output()
        assert front.answers[-1] == 403
        for pid in pids:
            await until(lambda pid=pid: not pid_alive(pid), f"child {pid} gone", timeout=5)
    finally:
        await agent.stop()


async def test_renewals_retry_while_management_is_down_and_an_expired_jwt_ends_the_agent(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront
) -> None:
    front.ttl = 3.0
    agent = await start_agent(tmp_path / "state", nats_url, front.url)
    try:
        status = await agent.wait_status(lambda s: s["registered"] and s["nats_connected"])
        front.down = True  # management goes away for good
        registered = len(front.bodies)
        async with asyncio.timeout(20):
            code = await agent.proc.wait()
        assert code == 1
        assert len(front.bodies) - registered >= 2  # it kept trying until the JWT expired
        assert "the NATS credentials expired; management did not renew them" in agent.output()
        assert status["peer_id"]
    finally:
        await agent.stop()


async def test_the_agent_pins_policys_keys_and_keeps_its_map_when_a_forged_one_arrives(
    tmp_path: Path, nats_url: str, policy: Management, front: RegistrationFront, nc: NATS
) -> None:
    state = tmp_path / "state"
    agent = await start_agent(
        state, nats_url, front.url, "--allow-server-ssh", key=SERVER_KEY, name="server"
    )
    try:
        status = await agent.wait_status(running("sshd", "relay"))
        pins = read_pins(state / PINS_FILE)
        assert pins.map == Signer.load(policy.bus.dir / "map-signing.pem", kind="map").pins
        assert pins.jwks == tuple((policy.bus.dir / "jwks-signing.pub").read_text().split())
        assert oct((state / PINS_FILE).stat().st_mode & 0o777) == "0o644"
        serial = await metric(status["ops_url"], "meshssh_agent_map_serial")
        assert serial >= 1
        forged = make_map(int(serial) + 5, peer_id=status["peer_id"], ssh_enabled=False)
        await put_map(nc, forged, signer=Signer(Ed25519PrivateKey.generate(), kind="map"))
        name = 'meshssh_agent_signed_doc_refused_total{kind="map",reason="unknown_key"}'
        async with asyncio.timeout(10):
            while await metric(status["ops_url"], name) != 1:
                await asyncio.sleep(0.05)
        assert await metric(status["ops_url"], "meshssh_agent_map_serial") == serial
        status = await agent.wait_status(running("sshd", "relay"))  # SSH stays on
        assert "refused a network map" in agent.output()
    finally:
        assert await agent.stop() == 0
