"""The JWKS mirror: rate-limited forced refreshes, Cache-Control, last good keys, fail closed."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from nats.aio.client import Client as NATS

from meshssh_authn.jwks_mirror import FetchLease
from meshssh_common import subjects
from meshssh_common.errors import Unavailable
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.rpc import request
from meshssh_common.wire import JwksRefreshReply, JwksRefreshRequest
from meshssh_testkit import NatsServer

if TYPE_CHECKING:
    from conftest import AuthnFactory, FakeIdp, Kv


async def refresh(nc: NATS, kid: str) -> JwksRefreshReply:
    req = JwksRefreshRequest(kid=kid, requester="test")
    return await request(nc, subjects.AUTHN_JWKS_REFRESH, req, JwksRefreshReply)


async def lease(nc: NATS) -> FetchLease:
    kv = TypedKV(await open_bucket(nc.jetstream(), subjects.BUCKET_AUTHN), FetchLease)
    entry = await kv.get(subjects.AUTHN_FETCH_LEASE_KEY)
    assert entry is not None
    return entry.value


def kids(snapshot: object) -> set[str]:
    return {str(k["kid"]) for k in snapshot.keys}  # type: ignore[attr-defined]


async def test_an_unknown_kid_causes_one_fetch_shared_by_every_waiting_request(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    # Two replicas: the limit holds across them, not per process.
    await authn.start("--issuer", fake_idp.issuer, instance="authn-a")
    await authn.start("--issuer", fake_idp.issuer, instance="authn-b")
    await kv.wait_snapshot()
    before = fake_idp.jwks_fetches
    fake_idp.add_key("k2")  # the provider rotated; servers meet a kid nobody mirrored yet
    token = fake_idp.token("k2")
    replies = await asyncio.gather(*(refresh(nc, "k2") for _ in range(8)))
    assert fake_idp.jwks_fetches == before + 1
    assert all("k2" in r.key_ids for r in replies)  # nobody is refused: they share the fetch
    assert sum(r.fetched for r in replies) >= 1
    assert kids(await kv.snapshot()) == {"k1", "k2"}
    assert (await kv.validator()).validate(token).user_id == "alice"

    known = await refresh(nc, "k2")  # a kid already published needs no fetch at all
    assert (known.fetched, known.retry_after) == (False, 0.0)
    assert "k2" in known.key_ids
    assert fake_idp.jwks_fetches == before + 1

    bogus = await refresh(nc, "made-up-kid")  # a new kid gets its fetch at the next slot
    assert bogus.fetched
    assert "made-up-kid" not in bogus.key_ids
    assert fake_idp.jwks_fetches == before + 2
    again = await asyncio.gather(*(refresh(nc, "made-up-kid") for _ in range(4)))
    assert all(not r.fetched and 0 < r.retry_after <= 30 for r in again)  # just missed
    assert fake_idp.jwks_fetches == before + 2


async def test_scheduled_fetches_follow_the_providers_cache_control(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    fake_idp.cache_control = "public, max-age=120"
    await authn.start(
        "--issuer",
        fake_idp.issuer,
        "--jwks-refresh-interval",
        "1",
        "--jwks-refresh-min-interval",
        "0",
    )
    await kv.wait_snapshot()
    first = await lease(nc)
    assert first.next_due - first.success_at == pytest.approx(120)
    assert first.holder == "authn-test"

    fake_idp.cache_control = "no-store"  # glewlwyd says this: refetch at the floor (1 s here)
    assert (await refresh(nc, "")).fetched
    second = await lease(nc)
    assert second.next_due - second.success_at == pytest.approx(1)
    fetches = fake_idp.jwks_fetches
    async with asyncio.timeout(20):
        while fake_idp.jwks_fetches < fetches + 2:  # the schedule runs on its own
            await asyncio.sleep(0.05)


async def test_a_provider_outage_keeps_the_last_good_keys_and_validation_goes_on(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    replica = await authn.start("--issuer", fake_idp.issuer, "--jwks-refresh-min-interval", "0")
    good = await kv.wait_snapshot()
    token = fake_idp.token("k1")
    fake_idp.healthy = False
    with pytest.raises(Unavailable):
        await refresh(nc, "unknown")
    fake_idp.healthy = True
    fake_idp.keys.clear()  # a provider that answers with no usable key is not believed either
    with pytest.raises(Unavailable):
        await refresh(nc, "unknown")
    assert await kv.snapshot() == good
    assert (await kv.validator()).validate(token).user_id == "alice"
    errors = "meshssh_authn_jwks_errors_total"
    assert replica.sample(errors, {"kind": "http_status"}) == 1
    assert replica.sample(errors, {"kind": "empty"}) == 1


async def test_switching_to_another_issuer_withdraws_the_old_keys_until_the_new_one_answers(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv
) -> None:
    first = await authn.start("--issuer", fake_idp.issuer)
    await kv.wait_snapshot()
    assert await first.stop() == 0
    await authn.start("--issuer", "http://127.0.0.1:9/unreachable")
    assert await kv.snapshot() is None  # servers fail closed rather than trust the old IdP


async def test_a_restart_during_an_outage_keeps_the_published_keys(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nats_server: NatsServer
) -> None:
    first = await authn.start("--issuer", fake_idp.issuer)
    good = await kv.wait_snapshot()
    assert await first.stop() == 0
    fake_idp.healthy = False
    replica = await authn.start("--issuer", fake_idp.issuer)
    assert await kv.snapshot() == good
    assert (
        replica.sample(
            "meshssh_authn_jwks_refreshes_total", {"trigger": "startup", "outcome": "error"}
        )
        == 1
    )
    nc = await nats_server.connect(nats_server.peer_creds("p1"))  # as an SSH server
    try:
        with pytest.raises(Unavailable):
            await refresh(nc, "whatever")  # served, refused honestly, nothing lost
    finally:
        await nc.close()
    assert await kv.snapshot() == good
