"""Key rotation of the embedded provider: publish before signing, keep until tokens expire.

The plan is tested with a clock passed in; the shared key ring runs on a real nats-server.
Tokens are checked with the real validator, built only from the published JWKs.
"""

from __future__ import annotations

import asyncio
import logging

import jwt
import pytest
from nats.aio.client import Client as NATS

from meshssh_authn.key_ring import KeyRing
from meshssh_authn.signing_keys import (
    KeySet,
    RotationPolicy,
    load_private_key,
    plan_rotation,
    public_jwk,
    sign,
)
from meshssh_common import subjects
from meshssh_common.jwt_validation import JwtValidator, RejectReason, TokenRejected
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import JwtConfig

POLICY = RotationPolicy(period=100, publish_lead=20, token_ttl=30, skew=5)
CONFIG = JwtConfig(issuer="https://idp", audiences=("meshssh",), max_token_age=600, clock_skew=5)
LOG = BoundLogger(logging.getLogger("test"), {})


def token_at(keys: KeySet, now: float) -> str:
    key = keys.signer(now)
    assert key is not None
    claims = {
        "iss": "https://idp",
        "aud": "meshssh",
        "sub": "alice",
        "iat": int(now),
        "exp": int(now) + POLICY.token_ttl,
    }
    return sign(key, load_private_key(key.private_pem), claims)


def validator_at(keys: KeySet, now: float) -> JwtValidator:
    return JwtValidator(CONFIG, [public_jwk(k) for k in keys.published(now)])


def test_a_fresh_key_set_gets_a_key_that_signs_at_once() -> None:
    keys = plan_rotation(KeySet(), 1000.0, POLICY, "ES256")
    assert keys is not None
    assert len(keys.keys) == 1
    key = keys.keys[0]
    assert (key.signs_from, key.signs_until, key.drop_after) == (1000, 1100, 1135)
    assert keys.signer(1000.0) == key
    assert plan_rotation(keys, 1050.0, POLICY, "ES256") is None  # nothing due yet


def test_a_successor_is_published_a_lead_before_it_signs_and_the_old_key_outlives_its_tokens() -> (
    None
):
    keys = plan_rotation(KeySet(), 1000.0, POLICY, "RS256")
    assert keys is not None
    first = keys.keys[0]
    assert plan_rotation(keys, 1079.0, POLICY, "RS256") is None
    keys = plan_rotation(keys, 1080.0, POLICY, "RS256")
    assert keys is not None
    assert len(keys.keys) == 2
    second = keys.keys[1]
    assert (second.created_at, second.signs_from) == (1080, 1100)
    # Published at 1080, but the first key still signs until 1100.
    assert {k.kid for k in keys.published(1080)} == {first.kid, second.kid}
    assert jwt.get_unverified_header(token_at(keys, 1099))["kid"] == first.kid
    assert jwt.get_unverified_header(token_at(keys, 1100))["kid"] == second.kid
    # The last token of the first key validates until it expires, with the keys then published.
    last = token_at(keys, 1099)
    assert validator_at(keys, 1133).validate(last, now=1133).kid == first.kid
    # Once every token it signed has expired (+ skew), the first key leaves the JWKS.
    later = plan_rotation(keys, 1135.0, POLICY, "RS256")
    assert later is not None
    assert [k.kid for k in later.keys] == [second.kid]
    with pytest.raises(TokenRejected) as gone:
        validator_at(later, 1136).validate(last, now=1136)
    assert gone.value.reason in (RejectReason.UNKNOWN_KID, RejectReason.EXPIRED)


def test_late_maintenance_stretches_the_current_key_rather_than_sign_with_an_unpublished_one() -> (
    None
):
    keys = plan_rotation(KeySet(), 1000.0, POLICY, "EdDSA")
    assert keys is not None
    late = plan_rotation(keys, 1095.0, POLICY, "EdDSA")  # 15 s before the end; lead is 20
    assert late is not None
    first, second = late.keys
    assert second.signs_from == 1115 == first.signs_until
    assert first.drop_after == 1115 + 35
    assert late.signer(1110) == first


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_each_signing_algorithm_yields_tokens_the_validator_accepts(alg: str) -> None:
    keys = plan_rotation(KeySet(), 1000.0, POLICY, alg)
    assert keys is not None
    jwk = public_jwk(keys.keys[0])
    assert "d" not in jwk
    assert (jwk["kid"], jwk["alg"]) == (keys.keys[0].kid, alg)
    assert validator_at(keys, 1001).validate(token_at(keys, 1000), now=1001).user_id == "alice"


async def test_replicas_rotating_at_once_create_one_successor_and_share_it(nc: NATS) -> None:
    bucket = TypedKV(await open_bucket(nc.jetstream(), subjects.BUCKET_AUTHN), KeySet)
    now = [1000.0]
    rings = [KeyRing(bucket, POLICY, "ES256", log=LOG, clock=lambda: now[0]) for _ in range(3)]
    sets = await asyncio.gather(*(r.ensure() for r in rings))
    assert len({s.keys[0].kid for s in sets}) == 1
    assert len(sets[0].keys) == 1
    now[0] = 1085.0
    sets = await asyncio.gather(*(r.ensure() for r in rings))
    assert all(s == sets[0] for s in sets)
    assert len(sets[0].keys) == 2
    assert sets[0].keys[1].signs_from == 1105  # a full lead after it was created
    now[0] = 1106.0
    signers = [(await r.signing_key())[0].kid for r in rings]
    assert signers == [sets[0].keys[1].kid] * 3
    assert {j["kid"] for j in rings[0].public_jwks()} == {k.kid for k in sets[0].keys}


def test_maintenance_after_the_end_of_a_window_never_signs_with_an_unpublished_key() -> None:
    keys = plan_rotation(KeySet(), 1000.0, POLICY, "ES256")
    assert keys is not None
    first = keys.keys[0]
    overdue = plan_rotation(keys, 1110.0, POLICY, "ES256")  # 10 s past the end, no successor
    assert overdue is not None
    stretched, successor = overdue.keys
    assert stretched.kid == first.kid
    assert overdue.signer(1110.0) == stretched  # the published key goes on signing...
    assert successor.signs_from == 1130.0  # ...until its successor was published a lead ago
    assert stretched.signs_until == 1130.0
    assert plan_rotation(overdue, 1111.0, POLICY, "ES256") is None


def test_after_an_absence_longer_than_a_keys_life_a_new_key_starts_cleanly() -> None:
    keys = plan_rotation(KeySet(), 1000.0, POLICY, "ES256")
    assert keys is not None
    later = plan_rotation(keys, 5000.0, POLICY, "ES256")
    assert later is not None
    assert [k.signs_from for k in later.keys] == [5000.0]
