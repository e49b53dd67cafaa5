"""NATS decentralized-auth JWTs and creds files, minted with ``nkeys`` (platform-notes §12).

A JWT is ``b64url(header).b64url(claims).b64url(sig)`` (no padding): the header is
``{"typ":"JWT","alg":"ed25519-nkey"}``, the signature is the issuer nkey's Ed25519 signature of
the first two parts, and ``jti`` is base32(sha512/256(claims)). nats-server 2.15 accepts the
claim shapes below; every limit is written out (-1), because a missing one means 0.

Example::

    op = new_key(Prefix.OPERATOR)
    jwt = user_jwt(acct_signing, user.public, name="policy", account=acct.public, perms=p)
    write_creds(path, jwt, user.seed)
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshssh_common.secret_files import write_secret_file

__all__ = [
    "Creds",
    "Key",
    "Prefix",
    "account_jwt",
    "check_public_key",
    "creds_text",
    "decode_claims",
    "key_from_seed",
    "new_key",
    "operator_jwt",
    "read_creds",
    "user_jwt",
    "write_creds",
]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}
_CREDS = re.compile(
    r"-----BEGIN NATS USER JWT-----\s*(?P<jwt>[A-Za-z0-9_.=-]+)\s*-+END NATS USER JWT-+.*?"
    r"-----BEGIN USER NKEY SEED-----\s*(?P<seed>S[A-Z0-9]+)\s*-+END USER NKEY SEED-+",
    re.S,
)


class Prefix(enum.IntEnum):
    """What an nkey is (its first letter once encoded)."""

    OPERATOR = nkeys.PREFIX_BYTE_OPERATOR
    ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT
    USER = nkeys.PREFIX_BYTE_USER


@dataclass(frozen=True)
class Key:
    """An nkey pair: ``seed`` ("S…", secret) and ``public`` ("O…", "A…" or "U…")."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data``."""
        kp = nkeys.from_seed(self.seed.encode())
        try:
            return bytes(kp.sign(data))
        finally:
            kp.wipe()


def new_key(prefix: Prefix) -> Key:
    """A fresh random key pair of kind ``prefix``."""
    return key_from_seed(nkeys.encode_seed(os.urandom(32), int(prefix)).decode())


def key_from_seed(seed: str) -> Key:
    """The key pair of an encoded seed.

    Raises:
        ValueError: not a valid nkey seed.
    """
    try:
        kp = nkeys.from_seed(seed.strip().encode())
    except (nkeys.NkeysError, ValueError, TypeError) as e:
        raise ValueError("not an nkey seed") from e
    try:
        return Key(seed=seed.strip(), public=kp.public_key.decode())
    finally:
        kp.wipe()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode(claims: dict[str, Any], issuer: Key) -> str:
    claims = {"iat": int(time.time()), **claims, "iss": issuer.public}
    body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    claims["jti"] = base64.b32encode(hashlib.new("sha512_256", body).digest()).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def _verify_key(public: str) -> Ed25519PublicKey:
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise ValueError("not an nkey public key")
    if int.from_bytes(raw[33:], "little") != nkeys.crc16(raw[:33]):
        raise ValueError("bad nkey checksum")
    return Ed25519PublicKey.from_public_bytes(raw[1:33])


def check_public_key(text: str, prefix: Prefix) -> str:
    """``text`` if it is an nkey public key of kind ``prefix`` (``U…`` for a user).

    Raises:
        ValueError: anything else (another kind, a seed, a bad checksum, garbage).
    """
    if len(text) != 56 or not text.isascii() or not text.isalnum():
        raise ValueError("not an nkey public key")
    try:
        raw = base64.b32decode(text)
    except ValueError as e:
        raise ValueError("not an nkey public key") from e
    if raw[0] != int(prefix):
        raise ValueError(f"not an nkey public key of kind {prefix.name.lower()}")
    try:
        _verify_key(text)  # the checksum
    except ValueError as e:
        raise ValueError(f"not an nkey public key: {e}") from e
    return text


def decode_claims(jwt: str) -> dict[str, Any]:
    """The claims of a JWT, after checking its signature against its ``iss``.

    Raises:
        ValueError: malformed, or the signature does not verify.
    """
    try:
        head, body, sig = jwt.strip().split(".")
        claims: dict[str, Any] = json.loads(_unb64(body))
        _verify_key(str(claims["iss"])).verify(_unb64(sig), f"{head}.{body}".encode())
    except (ValueError, KeyError, TypeError, InvalidSignature) as e:
        raise ValueError("not a valid NATS JWT") from e
    return claims


def operator_jwt(operator: Key, *, name: str, system_account: str, signing_keys: list[str]) -> str:
    """The self-signed operator JWT."""
    nats = {
        "type": "operator",
        "version": 2,
        "system_account": system_account,
        "signing_keys": signing_keys,
    }
    return _encode({"sub": operator.public, "name": name, "nats": nats}, operator)


def account_jwt(
    signer: Key,
    account: str,
    *,
    name: str,
    signing_keys: tuple[str, ...] | list[str] = (),
    revocations: dict[str, int] | None = None,
    jetstream: bool = True,
) -> str:
    """An account JWT signed by the operator (or one of its signing keys).

    Args:
        signer: the operator key, or an operator signing key.
        account: the account's public key.
        name: the account's name.
        signing_keys: account signing keys that may sign its users.
        revocations: user public key → unix time; JWTs issued at or before it are refused.
        jetstream: give the account unlimited JetStream (the system account has none).
    """
    limits = dict(_UNLIMITED_ACCOUNT)
    if not jetstream:
        limits.update(mem_storage=0, disk_storage=0, streams=0, consumer=0)
    nats: dict[str, Any] = {
        "type": "account",
        "version": 2,
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "signing_keys": list(signing_keys),
    }
    if revocations:
        nats["revocations"] = dict(revocations)
    return _encode({"sub": account, "name": name, "nats": nats}, signer)


def user_jwt(
    signer: Key,
    user: str,
    *,
    name: str,
    account: str,
    permissions: dict[str, Any],
    ttl: float | None = None,
) -> str:
    """A user JWT signed by an account signing key (``issuer_account`` names the account).

    Args:
        signer: the account signing key (or the account key itself).
        user: the user's public key.
        name: the user's name (shown in monitoring).
        account: the account's public key.
        permissions: ``{"pub": {...}, "sub": {...}, "resp": {...}?}`` (see bus_permissions).
        ttl: seconds until it expires (None: never).
    """
    nats: dict[str, Any] = {
        "type": "user",
        "version": 2,
        "subs": -1,
        "data": -1,
        "payload": -1,
        **permissions,
    }
    if signer.public != account:
        nats["issuer_account"] = account
    claims: dict[str, Any] = {"sub": user, "name": name, "nats": nats}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return _encode(claims, signer)


def creds_text(jwt: str, seed: str) -> str:
    """A creds file's text, in nsc's exact layout (nats-py's reader depends on it)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def write_creds(path: Path, jwt: str, seed: str) -> None:
    """Write a creds file atomically, mode 0600."""
    write_secret_file(path, creds_text(jwt, seed))


@dataclass(frozen=True)
class Creds:
    """A parsed creds file."""

    jwt: str
    seed: str
    public_key: str  # the user's public key (the JWT's ``sub``)
    expires_at: float | None  # the JWT's ``exp``


def read_creds(path: Path) -> Creds:
    """Parse and check a creds file: the seed must be the key the JWT was issued to.

    Raises:
        ValueError: unreadable, malformed, or the seed does not match the JWT.
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from e
    m = _CREDS.search(text)
    if m is None:
        raise ValueError(f"{path} is not a NATS creds file")
    claims = decode_claims(m["jwt"])
    key = key_from_seed(m["seed"])
    if key.public != claims.get("sub"):
        raise ValueError(f"{path}: the seed does not belong to the JWT's user")
    exp = claims.get("exp")
    return Creds(
        jwt=m["jwt"],
        seed=m["seed"],
        public_key=key.public,
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )
