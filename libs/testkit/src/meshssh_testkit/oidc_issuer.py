"""A third-party-style OIDC issuer whose signing keys the test holds, on a real HTTP server.

It serves discovery (``/.well-known/openid-configuration``) and a JWKS (``/keys``) on
127.0.0.1 with a port the OS picks, signs tokens with its ES256 keys, lets the test rotate
them, and counts JWKS fetches (``jwks_fetches``, with their times in ``fetch_times``) so a
test can prove what reached the provider. It stands in for a hosted IdP (Okta, Entra ID...)
that cannot run here; real OIDC servers are tested in the authn suite.

Example::

    async with OidcIssuer() as idp:
        idp.rotate("k2")
        token = idp.token("k2", sub="alice")
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from meshssh_common.http_server import HttpServer

__all__ = ["OidcIssuer"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class OidcIssuer:
    """Discovery and JWKS over HTTP, keys and tokens in the test's hands."""

    def __init__(self, *, audience: str = "meshssh", first_kid: str = "k1") -> None:
        self.audience = audience
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.jwks_fetches = 0
        self.fetch_times: list[float] = []  # time.monotonic() of each JWKS fetch
        self.cache_control = "public, max-age=3600"

        async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
            await self._serve(scope, send)  # a plain function: uvicorn takes it as ASGI 3

        self.server = HttpServer(app, "127.0.0.1:0")
        self.issuer = self.server.url
        self._task: asyncio.Task[None] | None = None
        self.add_key(first_kid)

    async def __aenter__(self) -> OidcIssuer:
        self._task = asyncio.create_task(self.server.serve())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.stop()
        if self._task is not None:
            async with asyncio.timeout(10):
                await self._task

    def add_key(self, kid: str) -> None:
        """Publish a new key next to the others."""
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def rotate(self, kid: str) -> None:
        """Replace every published key by a new one (a provider that rotates at once)."""
        self.keys = {kid: ec.generate_private_key(ec.SECP256R1())}

    def public(self, kid: str) -> dict[str, Any]:
        """The public JWK of key ``kid`` as the JWKS serves it."""
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
        return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}

    def token(self, kid: str, sub: str = "alice", *, key: Any = None, **claims: Any) -> str:
        """A token signed by key ``kid`` (or by ``key`` under that kid: a made-up kid)."""
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        signer = key if key is not None else self.keys[kid]
        return jwt.encode(body, signer, algorithm="ES256", headers={"kid": kid})

    async def _serve(self, scope: dict[str, Any], send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        headers = [(b"content-type", b"application/json")]
        if path == "/.well-known/openid-configuration":
            body: dict[str, Any] = {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/keys",
                "token_endpoint": f"{self.issuer}/token",
                "device_authorization_endpoint": f"{self.issuer}/device",
            }
            status = 200
        elif path == "/keys":
            self.jwks_fetches += 1
            self.fetch_times.append(time.monotonic())
            body = {"keys": [self.public(kid) for kid in self.keys]}
            headers.append((b"cache-control", self.cache_control.encode()))
            status = 200
        else:
            body, status = {"error": "not_found"}, 404
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
