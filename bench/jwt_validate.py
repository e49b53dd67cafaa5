"""How fast does an SSH server validate a login token, compared with bare PyJWT?

For RS256 (RSA-2048), ES256 (P-256) and EdDSA (Ed25519): validations per second on one core
of ``JwtValidator.validate`` (key lookup by kid from a JWKS, signature, every claim check of
SPEC §6), against the reference ``jwt.decode(token, key, algorithms=[alg], audience=...,
issuer=...)`` with the key object already in hand. A and B alternate in rounds; each figure
is the median of the per-round ratios (min and max shown).

Run: ``.venv/bin/python bench/jwt_validate.py`` (about 20 s). Nothing is started: this is
CPU-bound work, pinned to one core.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from meshssh_common.jwt_validation import JwtValidator
from meshssh_common.wire import JwtConfig

ISSUER = "https://idp.bench"
ROUNDS = 9
ROUND_SECONDS = 0.35


def make_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (batches to keep timer cost low)."""
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(20):
            fn()
        calls += 20
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


def measure(alg: str) -> dict[str, float]:
    private = make_key(alg)
    public = private.public_key()
    jwk = get_default_algorithms()[alg].to_jwk(public, as_dict=True)  # type: ignore[attr-defined]
    # A realistic JWKS: the signing key among two others (rotation keeps several published).
    others = [
        {**get_default_algorithms()[alg].to_jwk(make_key(alg).public_key(), as_dict=True),  # type: ignore[attr-defined]
         "kid": f"old-{i}", "use": "sig"}
        for i in range(2)
    ]  # fmt: skip
    keys = [*others, {**jwk, "kid": "current", "use": "sig"}]
    config = JwtConfig(issuer=ISSUER, audiences=("meshssh",), max_token_age=600, clock_skew=60)
    validator = JwtValidator(config, keys)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "meshssh", "sub": "alice", "iat": now, "exp": now + 600,
              "email": "alice@example.com", "groups": ["dev"]}  # fmt: skip
    token = jwt.encode(claims, private, algorithm=alg, headers={"kid": "current"})
    assert validator.validate(token).user_id == "alice"

    def ours() -> object:
        return validator.validate(token)

    def reference() -> object:
        return jwt.decode(token, public, algorithms=[alg], audience="meshssh", issuer=ISSUER,
                          options={"require": ["exp", "iat"]}, leeway=60)  # fmt: skip

    rate(ours, 0.2)  # warm up both
    rate(reference, 0.2)
    ratios, ours_rates, ref_rates = [], [], []
    for i in range(ROUNDS):
        if i % 2 == 0:
            a, b = rate(ours, ROUND_SECONDS), rate(reference, ROUND_SECONDS)
        else:
            b, a = rate(reference, ROUND_SECONDS), rate(ours, ROUND_SECONDS)
        ours_rates.append(a)
        ref_rates.append(b)
        ratios.append(a / b)
    return {
        "ours": statistics.median(ours_rates),
        "reference": statistics.median(ref_rates),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    results = {alg: measure(alg) for alg in ("RS256", "ES256", "EdDSA")}
    out = sys.stdout
    out.write(
        f"{'alg':<6} {'validator/s':>12} {'PyJWT/s':>10} {'ratio':>7} {'min':>6} {'max':>6}\n"
    )
    for alg, r in results.items():
        out.write(
            f"{alg:<6} {r['ours']:>12.0f} {r['reference']:>10.0f} {r['ratio']:>7.3f} "
            f"{r['ratio_min']:>6.3f} {r['ratio_max']:>6.3f}\n"
        )
    figures: dict[str, object] = {"bench": "jwt_validate"}
    for alg, r in results.items():
        name = alg.lower()
        figures[f"{name}_per_s"] = round(r["ours"])
        figures[f"{name}_ratio"] = round(r["ratio"], 3)
    out.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
