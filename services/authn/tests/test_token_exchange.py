"""Token exchange at authn (issue 15): per-peer tokens from IdP tokens, and the signed JWKS.

authn runs in-process against a real nats-server and mirrors a real HTTP provider
(``FakeIdp``); requests go over the bus exactly as an agent sends them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.errors import BadRequest, Denied, RateLimited
from meshssh_common.kv import open_bucket
from meshssh_common.rpc import request
from meshssh_common.signed_doc import Refused, Signer, Verifier, new_signing_key
from meshssh_common.wire import (
    JwksSnapshot,
    SignedDoc,
    TokenExchangeReply,
    TokenExchangeRequest,
)
from meshssh_common.wire.authn import peer_audience

if TYPE_CHECKING:
    from conftest import AuthnFactory, FakeIdp, Kv


async def exchange(nc: NATS, token: str, target: str, requester: str = "p1") -> str:
    req = TokenExchangeRequest(subject_token=token, target_peer=target)
    reply = await request(nc, subjects.token_exchange(requester), req, TokenExchangeReply)
    assert reply.issued_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert 0 < reply.expires_in <= 120
    return reply.access_token


def claims_of(token: str, snap: JwksSnapshot, target: str) -> dict[str, Any]:
    """The claims of a per-peer token, verified with the published exchange key."""
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in snap.exchange_keys if k["kid"] == kid]
    key = jwt.PyJWK(jwk).key
    out: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience=peer_audience(target),
        issuer=snap.exchange_issuer,
    )
    return out


async def test_exchange_gives_a_short_per_peer_token_with_the_original_iat(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    running = await authn.start("--issuer", fake_idp.issuer)
    snap = await kv.wait_snapshot()
    assert snap.exchange_issuer == "urn:meshssh:authn"
    assert [k["kid"].startswith("x-") and "d" not in k for k in snap.exchange_keys] == [True]
    iat = int(time.time()) - 30
    idp_token = fake_idp.token("k1", iat=iat, exp=iat + 600, auth_time=iat - 5)

    first = await exchange(nc, idp_token, "server-a")
    second = await exchange(nc, idp_token, "server-a")
    claims = claims_of(first, snap, "server-a")
    assert jwt.get_unverified_header(first)["alg"] == "EdDSA"
    assert claims["aud"] == "meshssh:peer:server-a"
    assert claims["sub"] == "alice"
    assert claims["iat"] == iat
    assert claims["auth_time"] == iat - 5
    assert claims["idp_iss"] == fake_idp.issuer
    assert 0 < claims["exp"] - time.time() <= 120
    assert len(claims["jti"]) == 22
    assert claims["jti"] != claims_of(second, snap, "server-a")["jti"]
    # a token near its end: the per-peer token ends with it
    late = fake_idp.token("k1", exp=int(time.time()) + 20)
    assert (
        claims_of(await exchange(nc, late, "server-b"), snap, "server-b")["exp"] <= time.time() + 20
    )
    assert running.sample("meshssh_authn_token_exchanges_total", {"result": "ok"}) == 3
    assert running.sample("meshssh_authn_token_exchange_seconds_count") == 3


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -3600, "iat": -4000}, "expired"),  # times: seconds from when the test runs
        ({"iss": "https://elsewhere.example"}, "bad_issuer"),
        ({"aud": "someone-else"}, "bad_audience"),
        ({"iat": -3600, "exp": 600}, "too_old"),
    ],
)
async def test_a_token_servers_would_refuse_is_refused_with_its_reason(
    authn: AuthnFactory,
    fake_idp: FakeIdp,
    kv: Kv,
    nc: NATS,
    claims: dict[str, Any],
    reason: str,
) -> None:
    running = await authn.start("--issuer", fake_idp.issuer)
    await kv.wait_snapshot()
    now = int(time.time())  # not at collection: a long suite would turn too_old into expired
    claims = {k: now + v if k in ("exp", "iat") else v for k, v in claims.items()}
    with pytest.raises(Denied) as refused:
        await exchange(nc, fake_idp.token("k1", **claims), "server-a")
    assert f"({reason})" in str(refused.value)
    with pytest.raises(Denied, match="malformed"):
        await exchange(nc, "not.a.jwt", "server-a")
    assert running.sample("meshssh_authn_token_exchanges_total", {"result": "refused"}) == 2


async def test_a_per_peer_token_is_not_exchanged_again_and_bad_payloads_are_refused(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    running = await authn.start("--issuer", fake_idp.issuer)
    await kv.wait_snapshot()
    per_peer = await exchange(nc, fake_idp.token("k1"), "server-a")
    with pytest.raises(Denied, match="re-exchange"):
        await exchange(nc, per_peer, "server-b")
    assert running.sample("meshssh_authn_token_exchanges_total", {"result": "reexchange"}) == 1
    reply = await nc.request(subjects.token_exchange("p1"), b"\xff not msgpack", timeout=5)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "bad_message"
    bad_target = codec.encode(TokenExchangeRequest(subject_token="x", target_peer="NOT A PEER"))
    reply = await nc.request(subjects.token_exchange("p1"), bad_target, timeout=5)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "bad_message"
    other_type = TokenExchangeRequest(
        subject_token=fake_idp.token("k1"), target_peer="server-a", subject_token_type="saml"
    )
    with pytest.raises(BadRequest):
        await request(nc, subjects.token_exchange("p1"), other_type, TokenExchangeReply)
    # authn still answers
    assert await exchange(nc, fake_idp.token("k1"), "server-a")


async def test_each_requesting_peer_has_its_own_rate_limit(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    running = await authn.start(
        "--issuer", fake_idp.issuer, "--exchange-rate", "0.01", "--exchange-burst", "3"
    )
    await kv.wait_snapshot()
    token = fake_idp.token("k1")
    for _ in range(3):
        await exchange(nc, token, "server-a", requester="p1")
    with pytest.raises(RateLimited, match="429"):
        await exchange(nc, token, "server-a", requester="p1")
    await exchange(nc, token, "server-a", requester="p2")  # another peer is not held up
    assert running.sample("meshssh_authn_token_exchanges_total", {"result": "rate_limited"}) == 1


async def test_two_replicas_share_one_exchange_key(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS
) -> None:
    a = await authn.start("--issuer", fake_idp.issuer, instance="authn-a")
    await authn.start("--issuer", fake_idp.issuer, instance="authn-b")
    snap = await kv.wait_snapshot()
    assert len(snap.exchange_keys) == 1
    token = fake_idp.token("k1")
    kids = set()
    for _ in range(8):  # the queue group spreads these over both replicas
        per_peer = await exchange(nc, token, "server-a")
        claims_of(per_peer, snap, "server-a")
        kids.add(jwt.get_unverified_header(per_peer)["kid"])
    assert kids == {snap.exchange_keys[0]["kid"]}
    await a.stop()  # and a replica started later loads the same key
    await authn.start("--issuer", fake_idp.issuer, instance="authn-c")
    assert (await kv.wait_snapshot()).exchange_keys == snap.exchange_keys


async def test_the_jwks_document_is_signed_and_verifies_only_with_its_pins(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS, jwks_key: Path, tmp_path: Path
) -> None:
    await authn.start("--issuer", fake_idp.issuer)
    snap = await kv.wait_snapshot()
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS)
    raw = (await bucket.get(subjects.JWKS_KEY)).value
    assert raw is not None
    doc = codec.decode(raw, SignedDoc)
    assert doc.kind == "jwks"
    pins = Signer.load(jwks_key, kind="jwks").pins
    assert Verifier("jwks", pins).open_as(raw, JwksSnapshot) == snap
    other = tmp_path / "other.pem"
    new_signing_key(other)
    with pytest.raises(Refused) as refused:
        Verifier("jwks", Signer.load(other, kind="jwks").pins).open_as(raw, JwksSnapshot)
    assert refused.value.why == "unknown_key"


async def test_authn_without_a_jwks_signing_key_exits_2(
    authn: AuthnFactory, tmp_path: Path
) -> None:
    from meshssh_authn.settings import AuthnSettings
    from meshssh_common.errors import ConfigError
    from meshssh_common.settings import parse_settings

    with pytest.raises(ConfigError, match="--jwks-signing-key: required"):
        parse_settings(AuthnSettings, ["--nats-url", "nats://127.0.0.1:1"], prog="meshssh-authn")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(RuntimeError, match="exited with 2"):
        await authn.start("--jwks-signing-key", str(bad))


async def test_exchange_latency_on_loopback(
    authn: AuthnFactory, fake_idp: FakeIdp, kv: Kv, nc: NATS, capsys: pytest.CaptureFixture[str]
) -> None:
    await authn.start("--issuer", fake_idp.issuer, "--exchange-burst", "1000")
    await kv.wait_snapshot()
    token = fake_idp.token("k1")
    await exchange(nc, token, "server-a")  # warm: the validator is built once
    took = []
    for _ in range(300):
        started = time.perf_counter()
        await exchange(nc, token, "server-a")
        took.append(time.perf_counter() - started)
    took.sort()
    p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
    with capsys.disabled():
        print(f"\ntoken exchange on loopback: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    assert p99 < 0.25  # generous: a shared CI machine; figures are in the report
