"""HTTP reads from an external OIDC provider: discovery, the JWKS, and its cache lifetime.

Everything that comes back is checked before use: the discovery ``issuer`` must be the
configured one (OIDC Discovery §4.3), a JWKS must be a JSON object with a ``keys`` list, and
only public signature keys of allowed kinds are kept (never ``oct`` secrets, never
encryption keys). Failures raise :class:`FetchError` with a bounded ``kind`` for metrics.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from meshssh_common.errors import Unavailable

__all__ = [
    "FetchError",
    "JwksDocument",
    "ProviderMetadata",
    "cache_lifetime",
    "discover",
    "fetch_jwks",
    "usable_keys",
]

_MAX_BODY = 1 << 20
_MAX_KEYS = 100
_ALLOWED_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)
_KTY = frozenset({"RSA", "EC", "OKP"})
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


class FetchError(Unavailable):
    """The provider could not be read; ``kind`` is a bounded metric label."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of an OIDC discovery document authn uses."""

    issuer: str
    jwks_uri: str
    token_endpoint: str = ""
    device_authorization_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class JwksDocument:
    """Usable keys and how long the provider says they may be cached (None: it did not say)."""

    keys: tuple[dict[str, Any], ...]
    max_age: float | None
    url: str


def cache_lifetime(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds a response may be cached per ``Cache-Control`` (then ``Expires``).

    ``no-store``/``no-cache`` give 0; ``max-age`` minus ``Age``; else ``Expires - Date``
    (or now); None when the response says nothing.
    """
    cc = headers.get("cache-control", "")
    lowered = cc.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    if m := _MAX_AGE.search(cc):
        age = headers.get("age", "0")
        return max(0.0, float(m[1]) - (float(age) if age.isdigit() else 0.0))
    expires = headers.get("expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            return 0.0  # an invalid Expires means "already expired" (RFC 9111 §5.3)
        base = now if now is not None else time.time()
        if date := headers.get("date"):
            with contextlib.suppress(TypeError, ValueError):
                base = email.utils.parsedate_to_datetime(date).timestamp()
        return max(0.0, when - base)
    return None


async def _get_json(http: httpx.AsyncClient, url: str) -> tuple[Any, httpx.Headers]:
    try:
        async with http.stream("GET", url, headers={"Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise FetchError("http_status", f"GET {url}: HTTP {resp.status_code}")
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise FetchError("bad_document", f"GET {url}: body over {_MAX_BODY} bytes")
            headers = resp.headers
    except httpx.HTTPError as e:
        raise FetchError("unreachable", f"GET {url}: {type(e).__name__}: {e}") from e
    try:
        return json.loads(body), headers
    except ValueError as e:
        raise FetchError("bad_document", f"GET {url}: not JSON") from e


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


async def discover(http: httpx.AsyncClient, issuer: str) -> ProviderMetadata:
    """Read ``<issuer>/.well-known/openid-configuration``.

    Raises:
        FetchError: unreachable, not a discovery document, or it names another issuer.
    """
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc, _ = await _get_json(http, url)
    if not isinstance(doc, dict) or not isinstance(doc.get("issuer"), str):
        raise FetchError("bad_document", f"{url}: no issuer in the discovery document")
    if not _same_issuer(doc["issuer"], issuer):
        raise FetchError(
            "issuer_mismatch", f"{url}: expected issuer {issuer!r}, got {doc['issuer']!r}"
        )
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
        raise FetchError("bad_document", f"{url}: no usable jwks_uri")

    def text(name: str) -> str:
        value = doc.get(name)
        return value if isinstance(value, str) else ""

    return ProviderMetadata(
        issuer=doc["issuer"],
        jwks_uri=jwks_uri,
        token_endpoint=text("token_endpoint"),
        device_authorization_endpoint=text("device_authorization_endpoint"),
    )


def usable_keys(keys: list[Any]) -> tuple[dict[str, Any], ...]:
    """The public signature keys among ``keys`` (JWK dicts), in order, at most 100."""
    out: list[dict[str, Any]] = []
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") not in _KTY:
            continue  # oct (shared secrets) and unknown kinds are never mirrored
        if jwk.get("use", "sig") != "sig" or ("alg" in jwk and jwk["alg"] not in _ALLOWED_ALGS):
            continue
        if "d" in jwk:  # a private key published by mistake: strip nothing, skip it
            continue
        out.append(jwk)
        if len(out) == _MAX_KEYS:
            break
    return tuple(out)


async def fetch_jwks(http: httpx.AsyncClient, url: str) -> JwksDocument:
    """GET a JWKS and keep its usable keys.

    Raises:
        FetchError: unreachable, malformed, or no usable key in it.
    """
    doc, headers = await _get_json(http, url)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise FetchError("bad_document", f"{url}: not a JWK set")
    keys = usable_keys(doc["keys"])
    if not keys:
        raise FetchError("empty", f"{url}: no usable signature key")
    return JwksDocument(keys=keys, max_age=cache_lifetime(headers), url=url)
