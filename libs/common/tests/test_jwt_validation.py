"""Table tests of the JWT validator: each bad token is refused with its own reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from meshssh_common.jwt_validation import (
    JwtValidator,
    RejectReason,
    TokenRejected,
    ValidatedToken,
)
from meshssh_common.wire import JwksSnapshot, JwtConfig

NOW = 1_800_000_000.0
ISS = "https://idp.example"
CONFIG = JwtConfig(
    issuer=ISS, audiences=("meshssh", "meshssh-cli"), max_token_age=600, clock_skew=60
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
NEW_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk(alg: type, key: Any, kid: str) -> dict[str, Any]:
    out: dict[str, Any] = alg.to_jwk(key.public_key(), as_dict=True)  # type: ignore[attr-defined]
    out["kid"] = kid
    out["use"] = "sig"
    return out


KEYS = [
    jwk(RSAAlgorithm, RSA_KEY, "rsa1"),
    jwk(ECAlgorithm, EC_KEY, "ec1"),
    jwk(OKPAlgorithm, ED_KEY, "ed1"),
]
VALIDATOR = JwtValidator(CONFIG, KEYS)


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": "meshssh",
        "sub": "alice",
        "iat": NOW - 10,
        "exp": NOW + 300,
        "email": "alice@example.com",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    payload: dict[str, Any], alg: str = "RS256", kid: str | None = "rsa1", key: Any = None
) -> str:
    if key is None:
        key = {"RS256": RSA_KEY, "PS256": RSA_KEY, "ES256": EC_KEY, "EdDSA": ED_KEY}[alg]
    headers = {"kid": kid} if kid else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(alg: str) -> str:
    header = b64(json.dumps({"alg": alg, "kid": "rsa1"}).encode())
    return f"{header}.{b64(json.dumps(claims()).encode())}."


def hs256_with_rsa_public_key() -> str:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa1'}).encode())}."
        f"{b64(json.dumps(claims()).encode())}"
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tamper_payload(token: str) -> str:
    h, _, s = token.split(".")
    return f"{h}.{b64(json.dumps(claims(sub='root')).encode())}.{s}"


def tamper_signature(token: str) -> str:
    h, p, s = token.split(".")
    return f"{h}.{p}.{s[:-4]}{'AAAA' if not s.endswith('AAAA') else 'BBBB'}"


REJECTIONS: list[tuple[str, str, RejectReason]] = [
    ("alg none", unsigned("none"), RejectReason.BAD_ALG),
    ("HS256 signed with the RSA public key", hs256_with_rsa_public_key(), RejectReason.BAD_ALG),
    ("expired", sign(claims(exp=NOW - 61)), RejectReason.EXPIRED),
    ("nbf in the future", sign(claims(nbf=NOW + 120)), RejectReason.NOT_YET_VALID),
    ("iat in the future beyond skew", sign(claims(iat=NOW + 61)), RejectReason.ISSUED_IN_FUTURE),
    ("older than max age", sign(claims(iat=NOW - 661)), RejectReason.TOO_OLD),
    ("wrong iss", sign(claims(iss="https://evil.example")), RejectReason.BAD_ISSUER),
    ("aud outside the list", sign(claims(aud="other")), RejectReason.BAD_AUDIENCE),
    ("aud missing", sign(claims(aud=None)), RejectReason.BAD_AUDIENCE),
    ("missing sub", sign(claims(sub=None)), RejectReason.MISSING_CLAIM),
    ("missing iat", sign(claims(iat=None)), RejectReason.MISSING_CLAIM),
    ("missing exp", sign(claims(exp=None)), RejectReason.MISSING_CLAIM),
    ("tampered payload", tamper_payload(sign(claims())), RejectReason.BAD_SIGNATURE),
    ("tampered signature", tamper_signature(sign(claims())), RejectReason.BAD_SIGNATURE),
    ("malformed base64", "eyJhbGciOiJSUzI1NiJ9.@@@!!.abc", RejectReason.MALFORMED),
    ("not a JWT at all", "hunter2", RejectReason.MALFORMED),
    ("16 KiB token", sign(claims(pad="x" * 16_384)), RejectReason.TOO_LARGE),
    ("unknown kid", sign(claims(), kid="rotated"), RejectReason.UNKNOWN_KID),
    ("RSA token presented with the EC key id", sign(claims(), kid="ec1"), RejectReason.BAD_ALG),
    (
        "signed by a key not in the set",
        sign(claims(), "EdDSA", "ed1", NEW_KEY),
        RejectReason.BAD_SIGNATURE,
    ),
    ("exp that is not a number", sign(claims(exp="tomorrow")), RejectReason.MALFORMED),
]


@pytest.mark.parametrize(
    ("token", "reason"), [(t, r) for _, t, r in REJECTIONS], ids=[n for n, _, _ in REJECTIONS]
)
def test_each_bad_token_is_refused_with_its_own_reason(token: str, reason: RejectReason) -> None:
    with pytest.raises(TokenRejected) as info:
        VALIDATOR.validate(token, now=NOW)
    assert info.value.reason is reason


def test_the_reasons_in_the_table_are_distinct_per_check() -> None:
    required = {
        RejectReason.BAD_ALG,
        RejectReason.EXPIRED,
        RejectReason.NOT_YET_VALID,
        RejectReason.ISSUED_IN_FUTURE,
        RejectReason.TOO_OLD,
        RejectReason.BAD_ISSUER,
        RejectReason.BAD_AUDIENCE,
        RejectReason.MISSING_CLAIM,
        RejectReason.BAD_SIGNATURE,
        RejectReason.MALFORMED,
        RejectReason.TOO_LARGE,
    }
    assert required <= {r for _, _, r in REJECTIONS}


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_tokens_of_every_allowed_family_are_accepted(alg: str) -> None:
    kid = {"RS256": "rsa1", "PS256": "rsa1", "ES256": "ec1", "EdDSA": "ed1"}[alg]
    token = VALIDATOR.validate(sign(claims(), alg, kid), now=NOW)
    assert isinstance(token, ValidatedToken)
    assert (token.user_id, token.kid, token.expires_at) == ("alice", kid, NOW + 300)


@pytest.mark.parametrize(
    "over",
    [
        {"exp": NOW - 59},  # expired 59 s ago: inside the 60 s skew
        {"iat": NOW + 59},  # issued 59 s "in the future": clocks a little apart
        {"iat": NOW - 659},  # 659 s old: max age 600 + skew 60
        {"nbf": NOW + 59},
    ],
)
def test_tokens_within_the_clock_skew_are_accepted(over: dict[str, float]) -> None:
    assert VALIDATOR.validate(sign(claims(**over)), now=NOW).user_id == "alice"


def test_an_aud_list_that_intersects_the_configured_list_is_accepted() -> None:
    token = sign(claims(aud=["account", "meshssh-cli"]))
    assert VALIDATOR.validate(token, now=NOW).claims["aud"] == ["account", "meshssh-cli"]


def test_errors_name_expected_and_actual_issuer_and_audience() -> None:
    with pytest.raises(TokenRejected) as iss:
        VALIDATOR.validate(sign(claims(iss="https://evil.example")), now=NOW)
    assert ISS in str(iss.value)
    assert "https://evil.example" in str(iss.value)
    with pytest.raises(TokenRejected) as aud:
        VALIDATOR.validate(sign(claims(aud="dashboard")), now=NOW)
    assert "meshssh" in str(aud.value)
    assert "dashboard" in str(aud.value)


def test_an_expired_token_tells_the_user_to_log_in_again() -> None:
    with pytest.raises(TokenRejected) as info:
        VALIDATOR.validate(sign(claims(exp=NOW - 3600)), now=NOW)
    assert "meshssh login" in info.value.public
    assert "alice" not in info.value.public


def test_a_token_without_kid_validates_against_a_single_key_set() -> None:
    single = JwtValidator(CONFIG, [jwk(RSAAlgorithm, RSA_KEY, "")])
    assert single.validate(sign(claims(), kid=None), now=NOW).user_id == "alice"


def test_a_newly_rotated_key_is_accepted_after_one_refresh_of_the_key_set() -> None:
    token = sign(claims(), "EdDSA", "ed2", NEW_KEY)
    with pytest.raises(TokenRejected) as info:
        VALIDATOR.validate(token, now=NOW)
    assert info.value.reason is RejectReason.UNKNOWN_KID
    refreshed = JwtValidator.from_snapshot(
        JwksSnapshot(jwt=CONFIG, keys=(*KEYS, jwk(OKPAlgorithm, NEW_KEY, "ed2")))
    )
    assert refreshed.validate(token, now=NOW).kid == "ed2"
    assert refreshed.key_ids == {"rsa1", "ec1", "ed1", "ed2"}


def test_no_configured_audience_refuses_everything() -> None:
    open_config = JwtConfig(issuer=ISS, audiences=())
    with pytest.raises(TokenRejected) as info:
        JwtValidator(open_config, KEYS).validate(sign(claims()), now=NOW)
    assert info.value.reason is RejectReason.BAD_AUDIENCE


def test_a_custom_user_id_claim_is_used() -> None:
    config = JwtConfig(issuer=ISS, audiences=("meshssh",), user_id_claim="email")
    token = JwtValidator(config, KEYS).validate(sign(claims(email_verified=True)), now=NOW)
    assert token.user_id == "alice@example.com"


def test_unusable_keys_in_the_set_are_skipped() -> None:
    keys = [
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "oct", "k": "c2VjcmV0"},
        {**jwk(RSAAlgorithm, RSA_KEY, "enc"), "use": "enc"},
        *KEYS,
    ]
    validator = JwtValidator(CONFIG, keys)
    assert "enc" not in validator.key_ids
    assert validator.validate(sign(claims()), now=NOW).kid == "rsa1"


def sign_raw(header: bytes, payload: bytes, key: Any = RSA_KEY, alg: str = "RS256") -> str:
    """A correctly signed token around JSON the test writes itself (PyJWT would not)."""
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input, key)
    return f"{signing_input.decode()}.{b64(signature)}"


GOOD_PAYLOAD = json.dumps(claims()).encode()
RSA_HEADER = b'{"alg":"RS256","kid":"rsa1"}'

# Shapes the faster parser must refuse as firmly as PyJWT did (or more firmly).
STRICT_REJECTIONS: list[tuple[str, str, RejectReason]] = [
    (
        "exp is Infinity",
        sign_raw(RSA_HEADER, GOOD_PAYLOAD.replace(str(NOW + 300).encode(), b"Infinity")),
        RejectReason.MALFORMED,
    ),
    (
        "iat is NaN",
        sign_raw(RSA_HEADER, GOOD_PAYLOAD.replace(str(NOW - 10).encode(), b"NaN")),
        RejectReason.MALFORMED,
    ),
    (
        "exp out of float range",
        sign_raw(RSA_HEADER, GOOD_PAYLOAD.replace(str(NOW + 300).encode(), b"1e999")),
        RejectReason.MALFORMED,
    ),
    ("payload is a JSON list", sign_raw(RSA_HEADER, b"[1,2]"), RejectReason.MALFORMED),
    ("kid is a number", sign_raw(b'{"alg":"RS256","kid":7}', GOOD_PAYLOAD), RejectReason.MALFORMED),
    (
        "alg is a list",
        sign_raw(b'{"alg":["RS256"],"kid":"rsa1"}', GOOD_PAYLOAD),
        RejectReason.BAD_ALG,
    ),
    (
        "crit header",
        sign_raw(b'{"alg":"RS256","kid":"rsa1","crit":["exp"],"exp":1}', GOOD_PAYLOAD),
        RejectReason.MALFORMED,
    ),
    (
        "unencoded payload (b64 false)",
        sign_raw(b'{"alg":"RS256","kid":"rsa1","b64":false,"crit":["b64"]}', GOOD_PAYLOAD),
        RejectReason.MALFORMED,
    ),
    ("four segments", sign(claims()) + ".AAAA", RejectReason.MALFORMED),
    ("non-ASCII", sign(claims())[:-2] + "é", RejectReason.MALFORMED),
    ("non-canonical base64 (trailing bits)", sign(claims())[:-1] + "_", RejectReason.MALFORMED),
    ("three padding characters", sign(claims()) + "===", RejectReason.MALFORMED),
    ("aud list of non-strings", sign(claims(aud=[1, None])), RejectReason.BAD_AUDIENCE),
    ("ES256 token naming a P-384 key", sign(claims(), "ES256", "p384"), RejectReason.BAD_ALG),
]


@pytest.mark.parametrize(
    ("token", "reason"),
    [(t, r) for _, t, r in STRICT_REJECTIONS],
    ids=[n for n, _, _ in STRICT_REJECTIONS],
)
def test_the_parser_refuses_every_odd_shape(token: str, reason: RejectReason) -> None:
    p384 = jwk(ECAlgorithm, ec.generate_private_key(ec.SECP384R1()), "p384")
    validator = JwtValidator(CONFIG, [*KEYS, p384])
    with pytest.raises(TokenRejected) as info:
        validator.validate(token, now=NOW)
    assert info.value.reason is reason


def test_a_correctly_signed_raw_token_is_accepted_and_padding_is_tolerated() -> None:
    # The control for the table above: the same helper makes a token that passes.
    token = sign_raw(RSA_HEADER, GOOD_PAYLOAD)
    assert VALIDATOR.validate(token, now=NOW).user_id == "alice"
    h, p, s = token.split(".")
    assert len(s) % 4
    padded = f"{h}.{p}.{s}{'=' * (-len(s) % 4)}"  # a padded signature, as AWS ALB sends
    assert VALIDATOR.validate(padded, now=NOW).user_id == "alice"


def test_a_pinned_alg_in_the_jwk_restricts_the_key_to_it() -> None:
    pinned = {**jwk(RSAAlgorithm, RSA_KEY, "rsa1"), "alg": "RS256"}
    validator = JwtValidator(CONFIG, [pinned])
    assert validator.validate(sign(claims()), now=NOW).kid == "rsa1"
    with pytest.raises(TokenRejected) as info:
        validator.validate(sign(claims(), "PS256", "rsa1"), now=NOW)
    assert info.value.reason is RejectReason.BAD_ALG


def test_has_kid_answers_for_usable_keys_only() -> None:
    assert VALIDATOR.has_kid("ec1")
    assert not VALIDATOR.has_kid("rotated")


EMAIL_CONFIG = JwtConfig(issuer=ISS, audiences=("meshssh",), user_id_claim="email")


@pytest.mark.parametrize(
    ("verified", "accepted"),
    [(True, True), ("true", True), (False, False), (None, False), ("yes", False), (1, False)],
)
def test_an_email_user_id_needs_email_verified_true(verified: Any, accepted: bool) -> None:
    validator = JwtValidator(EMAIL_CONFIG, KEYS)
    token = sign(claims(email_verified=verified))
    if accepted:
        assert validator.validate(token, now=NOW).user_id == "alice@example.com"
        return
    with pytest.raises(TokenRejected) as info:
        validator.validate(token, now=NOW)
    assert info.value.reason is RejectReason.EMAIL_NOT_VERIFIED
    assert "verif" in info.value.public


def test_email_verified_can_be_switched_off_and_never_matters_for_sub() -> None:
    lenient = JwtConfig(
        issuer=ISS, audiences=("meshssh",), user_id_claim="email", require_email_verified=False
    )
    token = sign(claims(email_verified=False))
    assert JwtValidator(lenient, KEYS).validate(token, now=NOW).user_id == "alice@example.com"
    assert VALIDATOR.validate(token, now=NOW).user_id == "alice"  # sub: not checked


def test_check_user_claim_applies_where_the_claim_is_chosen_elsewhere() -> None:
    from meshssh_common.jwt_validation import check_user_claim

    assert check_user_claim({"email": "a@b", "email_verified": True}, "email", CONFIG) == "a@b"
    with pytest.raises(TokenRejected) as info:
        check_user_claim({"email": "a@b"}, "email", CONFIG)
    assert info.value.reason is RejectReason.EMAIL_NOT_VERIFIED
    with pytest.raises(TokenRejected) as missing:
        check_user_claim({"sub": "x"}, "email", CONFIG)
    assert missing.value.reason is RejectReason.MISSING_CLAIM
