"""Forced JWKS refreshes across authn replicas: paced globally, throttled per kid (issue 12).

Two in-process authn replicas mirror a third-party-style issuer on a real HTTP server (the
test holds its keys and counts its fetches) over a real nats-server; the requests are the
ones SSH servers send on ``jwks-refresh``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.rpc import request
from meshssh_common.wire import JwksRefreshReply, JwksRefreshRequest
from meshssh_testkit import OidcIssuer

if TYPE_CHECKING:
    from conftest import AuthnFactory, Kv, RunningAuthn


async def refresh(nc: NATS, kid: str, *others: str) -> JwksRefreshReply:
    req = JwksRefreshRequest(kid=kid, kids=others, requester="test")
    return await request(nc, subjects.AUTHN_JWKS_REFRESH, req, JwksRefreshReply, timeout=10)


def forced(replicas: list[RunningAuthn], outcome: str) -> float:
    name = "meshssh_authn_jwks_refreshes_total"
    return sum(r.sample(name, {"trigger": "forced", "outcome": outcome}) for r in replicas)


async def test_a_flood_of_made_up_kids_is_paced_and_a_rotation_still_gets_through(
    authn: AuthnFactory, kv: Kv, nc: NATS
) -> None:
    async with OidcIssuer() as idp:
        replicas = [
            await authn.start("--issuer", idp.issuer, instance="authn-a"),
            await authn.start("--issuer", idp.issuer, instance="authn-b"),
        ]
        await kv.wait_snapshot()
        start = idp.jwks_fetches
        began = time.monotonic()

        async def server(n: int) -> JwksRefreshReply:  # one SSH server's batch of made-up kids
            await asyncio.sleep(n * 0.02)
            kids = [f"made-up-{uuid.uuid4().hex}" for _ in range(5)]
            return await refresh(nc, *kids)

        flood = [asyncio.create_task(server(n)) for n in range(150)]  # over 3 s
        await asyncio.sleep(1.2)
        idp.add_key("k2")  # the provider rotates in the middle of it
        asked = time.monotonic()
        real = await refresh(nc, "k2")
        waited = time.monotonic() - asked
        assert "k2" in real.key_ids
        assert waited < 2.0, f"the rotated kid waited {waited:.2f}s"
        async with asyncio.timeout(20):
            replies = await asyncio.gather(*flood)
        window = time.monotonic() - began

        fetches = idp.fetch_times[start:]
        assert 1 <= len(fetches) <= int(window / 1.0) + 1, (len(fetches), window)
        gaps = [b - a for a, b in itertools.pairwise(fetches)]
        assert all(gap > 0.9 for gap in gaps), gaps  # one a second across both replicas
        # Each request was either answered by a fetch that started after it came, or refused
        # with a time to wait; none was simply dropped.
        assert all(r.fetched or r.retry_after > 0 for r in replies)
        assert forced(replicas, "updated") >= 1


async def test_a_kid_that_just_missed_is_refused_at_once_by_every_replica(
    authn: AuthnFactory, kv: Kv, nc: NATS
) -> None:
    async with OidcIssuer() as idp:
        replicas = [
            await authn.start("--issuer", idp.issuer, instance="authn-a"),
            await authn.start("--issuer", idp.issuer, instance="authn-b"),
        ]
        await kv.wait_snapshot()
        start = idp.jwks_fetches
        first = await refresh(nc, "made-up")
        assert first.fetched
        assert "made-up" not in first.key_ids
        assert idp.jwks_fetches == start + 1
        # The replica that fetched tells the others: stop it, and the one left still
        # refuses the kid at once, with no fetch and no wait for a slot.
        fetcher = next(r for r in replicas if forced([r], "updated") + forced([r], "unchanged"))
        other = next(r for r in replicas if r is not fetcher)
        assert await fetcher.stop() == 0
        again = await asyncio.gather(*(refresh(nc, "made-up") for _ in range(5)))
        assert all(not r.fetched and 0 < r.retry_after <= 30 for r in again)
        assert idp.jwks_fetches == start + 1
        assert forced([other], "throttled_kid") == 5

        # A batch with one fresh kid among the missed one is not refused: it gets a fetch.
        idp.add_key("k2")
        mixed = await refresh(nc, "made-up", "k2")
        assert mixed.fetched
        assert "k2" in mixed.key_ids
        assert idp.jwks_fetches == start + 2
