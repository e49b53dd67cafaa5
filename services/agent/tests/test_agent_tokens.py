"""The agent's token cache (authn's TokenCache + put + map limits + the cancelling-flight
guard). The fetch is the cache's seam: here a coroutine the test controls."""

from __future__ import annotations

import base64
import json

from meshssh_agent.tokens import AgentTokenCache, Notify
from meshssh_common.wire import JwtConfig


def jwt(**claims: float) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'EdDSA'})}.{part(dict(claims))}.c2ln"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def never(uid: int, notify: Notify) -> str:
    raise AssertionError("no fetch expected")


def test_put_keeps_a_token_until_the_earliest_of_ttl_exp_and_max_age_less_skew() -> None:
    clock = Clock()
    now = clock.now
    cache = AgentTokenCache(never, ttl=300, max_token_age=600, clock_skew=60, clock=clock)
    by_ttl = cache.put(1, jwt(iat=now, exp=now + 3600))
    assert by_ttl is not None
    assert by_ttl.valid_until == now + 300
    by_exp = cache.put(2, jwt(iat=now, exp=now + 100))
    assert by_exp is not None
    assert by_exp.valid_until == now + 40
    by_age = cache.put(3, jwt(iat=now - 500, exp=now + 3600))  # Entra back-dates iat
    assert by_age is not None
    assert by_age.valid_until == now + 40
    assert cache.put(4, jwt(iat=now - 590, exp=now + 3600)) is None  # already too old
    clock.now += 41
    assert cache.peek(2) is None
    assert cache.peek(1) is not None


def test_a_ttl_of_zero_keeps_nothing_and_the_map_sets_the_servers_limits() -> None:
    clock = Clock()
    assert AgentTokenCache(never, ttl=0, clock=clock).put(1, jwt(exp=clock.now + 60)) is None
    cache = AgentTokenCache(never, ttl=3600, clock=clock)
    cache.follow(JwtConfig(issuer="https://idp", max_token_age=120, clock_skew=10))
    entry = cache.put(1, jwt(iat=clock.now, exp=clock.now + 3600))
    assert entry is not None
    assert entry.valid_until == clock.now + 110
