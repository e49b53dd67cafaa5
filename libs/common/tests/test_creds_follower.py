"""A connection made with a creds file follows it: a renewed JWT is taken up before the old
one expires (nats-server closes a live connection at its JWT's ``exp``, and nats-py does not
reconnect then); a file for another key is not. Against a real nats-server with JWT auth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshssh_common.bus_keys import BusKeys
from meshssh_common.bus_permissions import inbox_prefix, peer_permissions
from meshssh_common.connection import connect_nats
from meshssh_common.creds_follower import poll_interval
from meshssh_common.nats_jwt import Key, Prefix, new_key, write_creds
from meshssh_testkit import NatsServer


@pytest.fixture
def bus(nats_server: NatsServer) -> tuple[NatsServer, BusKeys]:
    """The testkit's nats-server (JWT auth on) and the keys its account trusts."""
    assert nats_server.keys is not None
    return nats_server, nats_server.keys


def issue(keys: BusKeys, path: Path, user: Key, ttl: float) -> None:
    perms = peer_permissions("p1", inbox_prefix(user.public))
    write_creds(path, keys.mint(user.public, name="p1", permissions=perms, ttl=ttl), user.seed)


def test_the_poll_follows_the_lifetime_within_bounds() -> None:
    assert poll_interval(None) == 5.0
    assert poll_interval(12 * 3600) == 5.0
    assert poll_interval(4.0) == pytest.approx(0.2)
    assert poll_interval(0.5) == 0.1


async def test_a_renewed_creds_file_keeps_the_connection_past_the_first_expiry(
    tmp_path: Path, bus: tuple[NatsServer, BusKeys]
) -> None:
    server, keys = bus
    user, creds = new_key(Prefix.USER), tmp_path / "p1.creds"
    issue(keys, creds, user, ttl=3)
    nc = await connect_nats(server.url, name="p1", creds=creds, retry_initial=False)
    try:
        first_expiry = time.time() + 3
        await asyncio.sleep(1.0)
        issue(keys, creds, user, ttl=30)  # the renewal, written as the agent writes it
        while time.time() < first_expiry + 1.5:
            await asyncio.sleep(0.2)
        assert nc.is_connected, nc.last_error
        await nc.publish("meshssh.policy.v1.evt.heartbeat.p1", b"{}")
        await nc.flush(timeout=2)
    finally:
        await nc.close()


async def test_a_creds_file_for_another_key_is_not_taken_up(
    tmp_path: Path, bus: tuple[NatsServer, BusKeys]
) -> None:
    server, keys = bus
    user, creds = new_key(Prefix.USER), tmp_path / "p1.creds"
    issue(keys, creds, user, ttl=3)
    nc = await connect_nats(server.url, name="p1", creds=creds, retry_initial=False)
    try:
        first_expiry = time.time() + 3
        await asyncio.sleep(0.5)
        issue(keys, creds, new_key(Prefix.USER), ttl=30)  # its inbox prefix would be wrong
        while time.time() < first_expiry + 1.5:
            await asyncio.sleep(0.2)
        assert not nc.is_connected  # still the old identity: closed when its JWT expired
        assert "expired" in str(nc.last_error)
    finally:
        await nc.close()
