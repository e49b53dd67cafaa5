"""The client token cache: per uid, bounded lifetime, one browser flow for concurrent callers."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING

import httpx
import pytest

from meshssh_agent.tokens import Notify, TokenCache, token_times
from meshssh_common.jwt_validation import JwtValidator
from meshssh_common.oidc_device import DeviceAuthorization, DeviceFlowClient

if TYPE_CHECKING:
    from conftest import Provider

NOW = 1_800_000_000.0


def fake_jwt(**claims: object) -> str:
    """An unsigned JWT-shaped token: the cache reads only its times (servers verify)."""

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


class Flows:
    """Counts fetches; each returns the next token of ``tokens`` after ``gate`` opens."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, uid: int, notify: Notify) -> str:
        self.calls.append(uid)
        await self.gate.wait()
        return self.tokens.pop(0)


def test_token_times_reads_iat_and_exp_and_tolerates_garbage() -> None:
    assert token_times(fake_jwt(iat=10, exp=20)) == (10.0, 20.0)
    assert token_times("opaque-token") == (None, None)
    assert token_times("a.!!!.c") == (None, None)


@pytest.mark.parametrize(
    ("ttl", "claims", "until"),
    [
        (300, {"iat": NOW, "exp": NOW + 3600}, NOW + 300),  # the TTL
        (3600, {"iat": NOW, "exp": NOW + 900}, NOW + 540),  # iat + max age (600) - skew (60)
        (3600, {"iat": NOW, "exp": NOW + 200}, NOW + 140),  # exp - skew
        (3600, {"iat": NOW - 300, "exp": NOW + 3600}, NOW + 240),  # a back-dated iat (Entra)
        (300, {}, NOW + 300),  # nothing to read: the TTL alone
    ],
)
def test_an_entry_never_outlives_the_ttl_the_tokens_exp_or_the_servers_max_age(
    ttl: float, claims: dict[str, float], until: float
) -> None:
    cache = TokenCache(Flows(), ttl=ttl, max_token_age=600, clock_skew=60, clock=lambda: NOW)
    assert cache.valid_until(fake_jwt(**claims), NOW) == until


async def test_concurrent_callers_share_one_flow_and_later_callers_hit_the_cache() -> None:
    now = [NOW]
    token = fake_jwt(iat=NOW, exp=NOW + 3600)
    flows = Flows(token, fake_jwt(iat=NOW + 400, exp=NOW + 4000))
    flows.gate.clear()
    cache = TokenCache(flows, ttl=300, clock=lambda: now[0])
    waiting = [asyncio.create_task(cache.get(1000)) for _ in range(10)]
    await asyncio.sleep(0)
    flows.gate.set()
    assert await asyncio.gather(*waiting) == [token] * 10
    assert flows.calls == [1000]
    now[0] = NOW + 299
    assert await cache.get(1000) == token
    assert flows.calls == [1000]
    now[0] = NOW + 300  # the TTL ran out: a new flow
    assert await cache.get(1000) != token
    assert flows.calls == [1000, 1000]


async def test_each_local_user_gets_their_own_token() -> None:
    flows = Flows(fake_jwt(sub="a"), fake_jwt(sub="b"))
    cache = TokenCache(flows, ttl=300)
    first, second = await asyncio.gather(cache.get(1000), cache.get(1001))
    assert first != second
    assert sorted(flows.calls) == [1000, 1001]


async def test_with_a_ttl_of_zero_nothing_is_cached_but_concurrent_callers_still_share() -> None:
    flows = Flows("t1", "t2")
    flows.gate.clear()
    cache = TokenCache(flows, ttl=0)
    both = asyncio.gather(cache.get(7), cache.get(7))
    await asyncio.sleep(0)
    flows.gate.set()
    assert await both == ["t1", "t1"]
    assert await cache.get(7) == "t2"
    assert cache.peek(7) is None


async def test_a_failed_flow_reaches_every_waiter_and_is_not_cached() -> None:
    calls = 0

    async def failing(uid: int, notify: Notify) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise RuntimeError("browser closed")
        return "ok"

    cache = TokenCache(failing, ttl=300)
    results = await asyncio.gather(cache.get(1), cache.get(1), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await cache.get(1) == "ok"
    assert calls == 2


async def test_the_flow_is_cancelled_when_its_last_caller_gives_up() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(uid: int, notify: Notify) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    cache = TokenCache(slow, ttl=300)
    one = asyncio.create_task(cache.get(1))
    two = asyncio.create_task(cache.get(1))
    await started.wait()
    one.cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set()  # the second caller still wants it
    two.cancel()
    async with asyncio.timeout(5):
        await cancelled.wait()
    await cache.aclose()


async def test_many_ssh_connections_at_once_run_one_real_browser_flow(provider: Provider) -> None:
    codes: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http:
        flow = DeviceFlowClient(provider.client, http)

        async def device_flow(uid: int, notify: Notify) -> str:
            auth = await flow.start()
            codes.append(auth.user_code)
            notify(auth)
            return (await flow.wait(auth)).token

        cache = TokenCache(
            device_flow,
            ttl=120,
            max_token_age=provider.client.max_token_age,
            clock_skew=provider.client.clock_skew,
        )
        shown: list[list[str]] = [[] for _ in range(5)]
        connections = [
            asyncio.create_task(
                cache.get(1000, on_prompt=lambda a, i=i: shown[i].append(a.user_code))
            )
            for i in range(5)
        ]
        async with asyncio.timeout(15):
            while not codes:
                await asyncio.sleep(0.02)
        late: list[str] = []
        connections.append(
            asyncio.create_task(cache.get(1000, on_prompt=lambda a: late.append(a.user_code)))
        )
        await asyncio.sleep(0.05)
        await provider.approve(codes[0])
        async with asyncio.timeout(30):
            tokens = await asyncio.gather(*connections)
        again = await cache.get(1000)
        await cache.aclose()
    assert len(codes) == 1
    assert shown == [codes] * 5  # every waiting connection showed the one URL and code
    assert late == codes  # a connection that joined later got them replayed
    assert len(set(tokens)) == 1
    assert again == tokens[0]
    assert JwtValidator.from_snapshot(provider.snapshot).validate(tokens[0]).user_id == "alice"
    assert await provider.metric('meshssh_authn_device_flows_total{outcome="started"}') == 1


async def test_a_caller_arriving_while_a_flow_is_cancelled_starts_a_fresh_one() -> None:
    started: list[int] = []

    async def fetch(uid: int, notify: Notify) -> str:
        started.append(uid)
        notify(DeviceAuthorization(f"d{len(started)}", f"CODE-{len(started)}", "u", "", 600, 1))
        if len(started) == 1:
            await asyncio.Event().wait()  # the user never signs in to the first flow
        return fake_jwt(sub=len(started))

    cache = TokenCache(fetch, ttl=300)
    first = asyncio.create_task(cache.get(1000))
    await asyncio.sleep(0.01)
    first.cancel()  # the only caller hangs up...
    await asyncio.sleep(0)  # ...its cleanup cancels the flow, which has not unwound yet
    token = await cache.get(1000)  # arrives in that window: must not share the cancellation
    assert started == [1000, 1000]
    assert token == fake_jwt(sub=2)
    assert first.cancelled()
    await cache.aclose()
