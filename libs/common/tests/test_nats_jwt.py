"""NATS JWTs and creds files: signatures verify, tampering and foreign seeds are refused.

The server-side proof (nats-server accepting these claims, refusing others) is in
test_bus_auth.py; these check the encoding itself.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from meshssh_common.bus_keys import BusKeys
from meshssh_common.bus_permissions import inbox_prefix, peer_permissions
from meshssh_common.nats_jwt import (
    Prefix,
    check_public_key,
    creds_text,
    decode_claims,
    key_from_seed,
    new_key,
    read_creds,
    user_jwt,
    write_creds,
)


def test_a_user_jwt_verifies_and_names_its_account_and_permissions() -> None:
    acct, signing, user = new_key(Prefix.ACCOUNT), new_key(Prefix.ACCOUNT), new_key(Prefix.USER)
    perms = peer_permissions("p1", inbox_prefix(user.public))
    jwt = user_jwt(
        signing,
        user.public,
        name="peer-p1",
        account=acct.public,
        permissions=perms.claims(),
        ttl=60,
    )
    claims = decode_claims(jwt)
    assert claims["sub"] == user.public
    assert claims["iss"] == signing.public
    assert claims["nats"]["issuer_account"] == acct.public
    assert claims["nats"]["sub"]["allow"] == sorted(perms.sub)
    assert claims["exp"] - claims["iat"] == 60
    assert user.public.startswith("U")
    assert acct.public.startswith("A")


def test_a_tampered_jwt_is_refused() -> None:
    signer, user = new_key(Prefix.ACCOUNT), new_key(Prefix.USER)
    jwt = user_jwt(
        signer,
        user.public,
        name="u",
        account=signer.public,
        permissions={"pub": {"allow": ["a"]}, "sub": {"allow": []}},
    )
    head, body, sig = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["nats"]["pub"]["allow"] = [">"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(ValueError, match="not a valid NATS JWT"):
        decode_claims(f"{head}.{forged}.{sig}")
    with pytest.raises(ValueError, match="not a valid NATS JWT"):
        decode_claims("not.a.jwt")


def test_creds_round_trip_with_mode_0600_and_a_foreign_seed_is_refused(tmp_path: Path) -> None:
    signer, user, other = new_key(Prefix.ACCOUNT), new_key(Prefix.USER), new_key(Prefix.USER)
    jwt = user_jwt(
        signer,
        user.public,
        name="u",
        account=signer.public,
        permissions={"pub": {}, "sub": {}},
        ttl=3600,
    )
    path = tmp_path / "nats.creds"
    write_creds(path, jwt, user.seed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = read_creds(path)
    assert (creds.public_key, creds.seed) == (user.public, user.seed)
    assert creds.expires_at is not None
    path.write_text(creds_text(jwt, other.seed))
    with pytest.raises(ValueError, match="does not belong"):
        read_creds(path)
    path.write_text("garbage")
    with pytest.raises(ValueError, match="not a NATS creds file"):
        read_creds(path)
    with pytest.raises(ValueError, match="not an nkey seed"):
        key_from_seed("SUNOTASEED")


def test_init_makes_every_file_private_and_load_needs_no_identity_seed(tmp_path: Path) -> None:
    keys = BusKeys.create(tmp_path / "bus", tls_hosts=("127.0.0.1",))
    d = keys.dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        if f.suffix not in (".crt", ".pub"):  # certificates and the JWKS pins are public
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    for seed in ("operator.nk", "account.nk", "system-account.nk"):
        (d / seed).unlink()  # kept offline in production
    loaded = BusKeys.load(d)
    assert loaded.account == keys.account
    jwt = loaded.account_jwt({"UABC": 1})
    claims = decode_claims(jwt)
    assert claims["iss"] == keys.operator_signing.public
    assert claims["nats"]["revocations"] == {"UABC": 1}
    with pytest.raises(FileExistsError):
        BusKeys.create(d)


def test_check_public_key_takes_only_a_well_formed_key_of_its_kind() -> None:
    user = new_key(Prefix.USER)
    assert check_public_key(user.public, Prefix.USER) == user.public
    bad = [
        "",
        "U" * 56,  # a bad checksum
        user.public[:-1] + ("A" if user.public[-1] != "A" else "B"),
        user.seed,  # a seed is no public key
        new_key(Prefix.ACCOUNT).public,
        user.public + "A",
        "U\u00e9" + user.public[2:],
    ]
    for text in bad:
        with pytest.raises(ValueError, match="not an nkey public key"):
            check_public_key(text, Prefix.USER)
