"""Per-peer token validation (SPEC §6) on its own: the exchange key set, the exact audience,
the lifetime bound, the jti, and no exchange issuer published (fail closed)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshssh_common.jwt_validation import RejectReason, TokenRejected
from meshssh_common.peer_tokens import PeerTokenValidator, exchange_kids
from meshssh_common.wire import JwksSnapshot, JwtConfig

KEY = Ed25519PrivateKey.generate()
KID = "x-0123456789abcdef"
IDP_KEY = Ed25519PrivateKey.generate()
CONFIG = JwtConfig(issuer="https://idp.test", audiences=("meshssh",))


def jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())), "kid": kid}


def snapshot(issuer: str = "urn:meshssh:authn") -> JwksSnapshot:
    return JwksSnapshot(
        jwt=CONFIG,
        keys=(jwk(IDP_KEY, "idp-1"),),
        exchange_issuer=issuer,
        exchange_keys=(jwk(KEY, KID), {"kty": "RSA", "kid": "x-rsa", "n": "AQAB", "e": "AQAB"}),
    )


def mint(key: Ed25519PrivateKey = KEY, kid: str = KID, **claims: Any) -> str:
    now = time.time()
    body = {
        "iss": "urn:meshssh:authn",
        "aud": "meshssh:peer:p1",
        "sub": "alice",
        "iat": int(now),
        "exp": int(now + 120),
        "jti": "abc",
        **claims,
    }
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})


def reason(token: str, snap: JwksSnapshot | None = None) -> RejectReason:
    with pytest.raises(TokenRejected) as e:
        PeerTokenValidator(CONFIG, snap or snapshot(), peer_id="p1").validate(token)
    return e.value.reason


def test_a_per_peer_token_for_this_peer_passes_with_its_jti_and_user() -> None:
    checked = PeerTokenValidator(CONFIG, snapshot(), peer_id="p1").validate(mint())
    assert (checked.jti, checked.token.user_id, checked.token.kid) == ("abc", "alice", KID)
    assert exchange_kids(snapshot()) == {KID, "x-rsa"}
    assert exchange_kids(None) == frozenset()
    assert PeerTokenValidator(CONFIG, snapshot(), peer_id="p1").key_ids == {KID}  # OKP only


def test_every_other_shape_is_refused_with_its_reason() -> None:
    assert reason(mint(aud="meshssh:peer:p2")) is RejectReason.WRONG_AUDIENCE
    assert reason(mint(aud=["meshssh:peer:p1"])) is RejectReason.WRONG_AUDIENCE
    assert reason(mint(aud="meshssh")) is RejectReason.WRONG_AUDIENCE
    assert reason(mint(iss="https://idp.test")) is RejectReason.BAD_ISSUER
    assert reason(mint(), snapshot(issuer="")) is RejectReason.BAD_ISSUER  # none published
    assert reason(mint(exp=int(time.time() + 600))) is RejectReason.TOO_LONG_LIVED
    assert reason(mint(jti="")) is RejectReason.MISSING_CLAIM
    assert reason(mint(jti=7)) is RejectReason.MISSING_CLAIM
    assert reason(mint(jti="j" * 129)) is RejectReason.MISSING_CLAIM
    assert reason(mint(iat=int(time.time() - 900))) is RejectReason.TOO_OLD
    assert reason(mint(key=IDP_KEY)) is RejectReason.BAD_SIGNATURE  # the IdP key, exchange kid
    assert reason(mint(key=IDP_KEY, kid="idp-1")) is RejectReason.UNKNOWN_KID
