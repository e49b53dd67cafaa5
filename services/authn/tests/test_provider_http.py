"""Reading an external provider: cache lifetimes, key filtering, device grants shared in KV."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_authn.device_grants import (
    DeviceGrant,
    DeviceGrants,
    DevicePointer,
    normalize_user_code,
)
from meshssh_authn.provider_http import cache_lifetime, usable_keys
from meshssh_common import subjects
from meshssh_common.errors import BadRequest, NotFound
from meshssh_common.kv import TypedKV, open_bucket

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ({"cache-control": "public, max-age=3600"}, 3600.0),
        ({"cache-control": "max-age=600", "age": "100"}, 500.0),
        ({"cache-control": 'max-age="90", must-revalidate'}, 90.0),
        ({"cache-control": "no-store"}, 0.0),
        ({"cache-control": "no-cache, max-age=3600"}, 0.0),
        ({"cache-control": "private"}, None),
        (
            {"expires": "Fri, 15 Jan 2027 08:00:00 GMT", "date": "Fri, 15 Jan 2027 07:00:00 GMT"},
            3600.0,
        ),
        ({"expires": "0"}, 0.0),
        ({}, None),
    ],
)
def test_the_cache_lifetime_follows_cache_control_then_expires(
    headers: dict[str, str], lifetime: float | None
) -> None:
    assert cache_lifetime(httpx.Headers(headers), now=NOW) == lifetime


def test_only_public_signature_keys_of_allowed_kinds_are_mirrored() -> None:
    keys: list[Any] = [
        {"kty": "RSA", "kid": "rsa", "n": "x", "e": "AQAB"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "x", "e": "AQAB"},
        {"kty": "EC", "kid": "hs", "alg": "HS256", "crv": "P-256", "x": "x", "y": "y"},
        {"kty": "OKP", "kid": "priv", "crv": "Ed25519", "x": "x", "d": "private"},
        {"kty": "EC", "kid": "ec", "alg": "ES256", "crv": "P-256", "x": "x", "y": "y"},
        "not a key",
    ]
    assert [k["kid"] for k in usable_keys(keys)] == ["rsa", "ec"]


def test_user_codes_are_accepted_in_any_case_and_with_or_without_the_dash() -> None:
    assert normalize_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalize_user_code(" BCDF GHJK ") == "BCDFGHJK"
    assert normalize_user_code("BCDF-GHJ") == ""  # too short
    assert normalize_user_code("AEIO-UBCD") == ""  # vowels are never issued
    assert normalize_user_code("uc.>") == ""  # nothing reaches a KV key unchecked


async def grants_on(nc: NATS, clock: list[float], interval: int = 0) -> DeviceGrants:
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_AUTHN_DEVICES)
    return DeviceGrants(
        TypedKV(bucket, DeviceGrant),
        TypedKV(bucket, DevicePointer),
        ttl=60,
        interval=interval,
        clock=lambda: clock[0],
    )


async def test_a_grant_started_on_one_replica_is_approved_on_another_and_paid_out_once(
    nc: NATS,
) -> None:
    clock = [NOW]
    one, two, three = [await grants_on(nc, clock) for _ in range(3)]
    started = await one.start("meshssh", "openid")
    assert (await two.poll(started.device_code, "meshssh"))[0] == "pending"
    assert (await three.pending(started.user_code)).status == "pending"
    await two.decide(started.user_code, "alice", approve=True)
    with pytest.raises(NotFound):
        await three.decide(started.user_code, "mallory", approve=True)  # decided already
    results = await asyncio.gather(
        *(g.poll(started.device_code, "meshssh") for g in (one, two, three))
    )
    paid = [grant for status, grant in results if status == "ok"]
    assert len(paid) == 1
    assert paid[0] is not None
    assert paid[0].username == "alice"
    assert (await one.poll(started.device_code, "meshssh"))[0] == "expired"


async def test_a_grant_expires_and_refuses_another_client(nc: NATS) -> None:
    clock = [NOW]
    grants = await grants_on(nc, clock)
    started = await grants.start("meshssh", "openid")
    with pytest.raises(BadRequest):
        await grants.poll(started.device_code, "someone-else")
    clock[0] += 61
    assert (await grants.poll(started.device_code, "meshssh"))[0] == "expired"
    with pytest.raises(NotFound):
        await grants.decide(started.user_code, "alice", approve=True)
    assert (await grants.poll("never-issued", "meshssh")) == ("expired", None)


async def test_polling_early_gets_slow_down_and_a_longer_interval(nc: NATS) -> None:
    clock = [NOW]
    grants = await grants_on(nc, clock, interval=5)
    started = await grants.start("meshssh", "openid")
    status, grant = await grants.poll(started.device_code, "meshssh")
    assert status == "pending"
    clock[0] += 1
    status, grant = await grants.poll(started.device_code, "meshssh")
    assert status == "slow_down"
    assert grant is not None
    assert grant.interval == 10
    clock[0] += 10
    assert (await grants.poll(started.device_code, "meshssh"))[0] == "pending"


class PollingBetweenReadAndWrite(TypedKV[DeviceGrant]):
    """The grants bucket, with the client's poll landing right after each of the first reads.

    This is the race a user met under load: approving while the client polled (every poll
    rewrites the pending grant) answered "code unknown, expired or used".
    """

    def __init__(self, inner: TypedKV[DeviceGrant], poll: Any, times: int) -> None:
        super().__init__(inner.kv, DeviceGrant)
        self.poll, self.times = poll, times

    async def get(self, key: str) -> Any:
        entry = await super().get(key)
        if self.times > 0:
            self.times -= 1
            await self.poll()
        return entry


async def test_an_approval_that_races_the_clients_poll_still_approves(nc: NATS) -> None:
    clock = [NOW]
    client = await grants_on(nc, clock)
    started = await client.start("meshssh", "openid")
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_AUTHN_DEVICES)

    async def poll() -> None:
        clock[0] += 1
        assert (await client.poll(started.device_code, "meshssh"))[0] == "pending"

    racing = PollingBetweenReadAndWrite(TypedKV(bucket, DeviceGrant), poll, times=2)
    approver = DeviceGrants(
        racing, TypedKV(bucket, DevicePointer), ttl=60, interval=0, clock=lambda: clock[0]
    )
    decided = await approver.decide(started.user_code, "alice", approve=True)
    assert decided.status == "approved"
    status, grant = await client.poll(started.device_code, "meshssh")
    assert status == "ok"
    assert grant is not None
    assert grant.username == "alice"
