"""How fast does an SSH server validate a login token, compared with bare PyJWT?

For RS256 (RSA-2048), ES256 (P-256) and EdDSA (Ed25519): validations per second on one core
of ``JwtValidator.validate`` (key lookup by kid from a JWKS of three keys, signature, every
claim check of SPEC §6), against the reference ``jwt.decode(token, key, algorithms=[alg],
audience=..., issuer=..., leeway=60, options={"require": ["exp", "iat"]})`` with the key object
already in hand, on the same token.

Each round interleaves the two sides finely: ``PAIRS`` batches of ``BATCH`` calls of each,
the order swapped every batch, so a neighbour's load lands on both sides alike. A round's
ratio is (reference time) / (validator time): above 1 means the validator is faster. The
table shows the median, min and max over ``ROUNDS`` rounds (at least 5), and the last line is
one JSON object (``<alg>_ratio`` is the median; ``<alg>_ratio_min``/``_max`` the spread).

Run: ``.venv/bin/python bench/jwt_validate.py`` (about 10 s). Nothing is started: this is
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
ALGS = ("RS256", "ES256", "EdDSA")
ROUNDS = 7
PAIRS = 12
BATCH = 50


def make_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def timed(fn: Callable[[], object]) -> float:
    """Seconds for ``BATCH`` calls of ``fn``."""
    started = time.perf_counter()
    for _ in range(BATCH):
        fn()
    return time.perf_counter() - started


def one_round(ours: Callable[[], object], reference: Callable[[], object]) -> tuple[float, float]:
    """Total seconds of each side over ``PAIRS`` interleaved batches."""
    a = b = 0.0
    for i in range(PAIRS):
        if i % 2 == 0:
            a += timed(ours)
            b += timed(reference)
        else:
            b += timed(reference)
            a += timed(ours)
    return a, b


def measure(alg: str) -> dict[str, float]:
    private = make_key(alg)
    public = private.public_key()
    to_jwk = get_default_algorithms()[alg].to_jwk  # type: ignore[attr-defined]
    # A realistic JWKS: the signing key among two others (rotation keeps several published).
    others = [
        {**to_jwk(make_key(alg).public_key(), as_dict=True), "kid": f"old-{i}", "use": "sig"}
        for i in range(2)
    ]
    keys = [*others, {**to_jwk(public, as_dict=True), "kid": "current", "use": "sig"}]
    config = JwtConfig(issuer=ISSUER, audiences=("meshssh",), max_token_age=600, clock_skew=60)
    validator = JwtValidator(config, keys)
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "meshssh",
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "email": "alice@example.com",
        "groups": ["dev"],
    }
    token = jwt.encode(claims, private, algorithm=alg, headers={"kid": "current"})
    assert validator.validate(token).user_id == "alice"

    def ours() -> object:
        return validator.validate(token)

    def reference() -> object:
        return jwt.decode(
            token,
            public,
            algorithms=[alg],
            audience="meshssh",
            issuer=ISSUER,
            options={"require": ["exp", "iat"]},
            leeway=60,
        )

    one_round(ours, reference)  # warm up both
    ratios, ours_rates, ref_rates = [], [], []
    calls = PAIRS * BATCH
    for _ in range(ROUNDS):
        a, b = one_round(ours, reference)
        ours_rates.append(calls / a)
        ref_rates.append(calls / b)
        ratios.append(b / a)
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
    results = {alg: measure(alg) for alg in ALGS}
    out = sys.stdout
    out.write(f"{ROUNDS} rounds x {PAIRS} interleaved batches of {BATCH} calls per side\n")
    out.write(
        f"{'alg':<6} {'validator/s':>12} {'PyJWT/s':>10} {'ratio':>7} {'min':>6} {'max':>6}\n"
    )
    for alg, r in results.items():
        out.write(
            f"{alg:<6} {r['ours']:>12.0f} {r['reference']:>10.0f} {r['ratio']:>7.3f} "
            f"{r['ratio_min']:>6.3f} {r['ratio_max']:>6.3f}\n"
        )
    figures: dict[str, object] = {"bench": "jwt_validate", "rounds": ROUNDS}
    for alg, r in results.items():
        name = alg.lower()
        figures[f"{name}_per_s"] = round(r["ours"])
        figures[f"{name}_reference_per_s"] = round(r["reference"])
        figures[f"{name}_ratio"] = round(r["ratio"], 3)
        figures[f"{name}_ratio_min"] = round(r["ratio_min"], 3)
        figures[f"{name}_ratio_max"] = round(r["ratio_max"], 3)
    out.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
