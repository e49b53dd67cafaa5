"""The per-uid token cache: TTL, and never beyond the token's exp or the servers' max age."""

from __future__ import annotations

import base64
import json

from meshssh_cli.agent_tokens import UidTokenCache, token_times


def jwt(**claims: float) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'EdDSA'})}.{part(dict(claims))}.c2ln"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_ttl_of_zero_caches_nothing() -> None:
    cache = UidTokenCache(0, lambda: 600)
    assert cache.put(1000, jwt(iat=1e9, exp=2e9)) is None
    assert cache.get(1000) is None


def test_a_token_lives_until_the_earliest_of_ttl_exp_and_max_age() -> None:
    clock = Clock()
    now = clock.now
    cache = UidTokenCache(300, lambda: 600, clock)
    by_ttl = cache.put(1, jwt(iat=now, exp=now + 3600))
    assert by_ttl is not None
    assert by_ttl.expires_at == now + 300
    by_exp = cache.put(2, jwt(iat=now, exp=now + 60))
    assert by_exp is not None
    assert by_exp.expires_at == now + 60
    by_age = cache.put(3, jwt(iat=now - 500, exp=now + 3600))  # Entra back-dates iat
    assert by_age is not None
    assert by_age.expires_at == now + 100
    assert cache.put(4, jwt(iat=now - 700, exp=now + 3600)) is None  # already too old
    clock.now += 61
    assert cache.get(2) is None
    assert cache.get(1) is not None
    clock.now += 240
    assert cache.get(1) is None


def test_slots_are_per_uid_and_dropping_one_keeps_the_others() -> None:
    cache = UidTokenCache(300, lambda: 600)
    a, b = jwt(sub=1), jwt(sub=2)
    cache.put(1000, a)
    cache.put(1001, b)
    cache.drop(1000)
    assert cache.get(1000) is None
    entry = cache.get(1001)
    assert entry is not None
    assert entry.token == b


def test_garbage_tokens_have_no_times_and_live_by_ttl_only() -> None:
    assert token_times("not-a-jwt") == (None, None)
    assert token_times("a.!!!.c") == (None, None)
    assert token_times(jwt(exp=5.0)) == (5.0, None)
