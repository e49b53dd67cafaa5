"""The embedded provider's authorization code grant with PKCE (the dashboard's sign-in).

Real authn process, real HTTP: the sign-in page, the redirect with the code, the token
exchange, and every way a code must fail (wrong verifier, reuse, other redirect, plain PKCE).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt

from meshssh_common.jwt_validation import JwtValidator
from meshssh_common.wire import JwtConfig
from meshssh_testkit import NatsServer
from meshssh_testkit.plugin import ServiceFactory

if TYPE_CHECKING:
    from conftest import Kv

CLIENT = "meshssh-dashboard"
REDIRECT = "http://127.0.0.1:1/auth/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def params(challenge: str, **over: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "state": "st-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "openid email",
        "nonce": "n-0S6",
        **over,
    }


async def test_code_flow_signs_in_and_every_misuse_of_a_code_fails(
    nats_server: NatsServer,
    services: ServiceFactory,
    users_file: Path,
    kv: Kv,
    passwords: dict[str, str],
) -> None:
    await services.start(
        "meshssh-authn",
        *nats_server.authn_flags(),
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        str(users_file),
        "--dashboard-redirect-uri",
        REDIRECT,
    )
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    issuer = snap.client.issuer
    async with httpx.AsyncClient(timeout=10) as http:
        meta = (await http.get(f"{issuer}/.well-known/openid-configuration")).json()
        assert meta["authorization_endpoint"] == f"{issuer}/oauth2/authorize"
        assert meta["code_challenge_methods_supported"] == ["S256"]
        authorize, token = meta["authorization_endpoint"], meta["token_endpoint"]

        verifier, challenge = pkce()
        page = await http.get(authorize, params=params(challenge))
        assert page.status_code == 200
        assert REDIRECT in page.text
        assert 'name="password"' in page.text
        assert "form-action 'self' http://127.0.0.1:1" in page.headers["content-security-policy"]

        form = {**params(challenge), "username": "alice", "password": "wrong"}
        assert (await http.post(authorize, data=form)).status_code == 401
        form["password"] = passwords["alice"]
        back = await http.post(authorize, data=form)
        assert back.status_code == 303
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert back.headers["location"].startswith(REDIRECT + "?")
        assert query["state"] == ["st-1"]
        code = query["code"][0]

        exchange = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": CLIENT,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }
        wrong = await http.post(token, data={**exchange, "code_verifier": pkce()[0]})
        assert wrong.json()["error"] == "invalid_grant"  # and the code is now spent
        assert (await http.post(token, data=exchange)).json()["error"] == "invalid_grant"

        async def fresh_code() -> tuple[str, str]:
            v, c = pkce()
            r = await http.post(
                authorize, data={**params(c), "username": "alice", "password": passwords["alice"]}
            )
            return v, parse_qs(urlsplit(r.headers["location"]).query)["code"][0]

        v, c = await fresh_code()
        other = await http.post(
            token, data={**exchange, "code": c, "code_verifier": v, "redirect_uri": REDIRECT + "x"}
        )
        assert other.json()["error"] == "invalid_grant"
        v, c = await fresh_code()
        ok = await http.post(token, data={**exchange, "code": c, "code_verifier": v})
        assert ok.status_code == 200, ok.text
        assert ok.headers["cache-control"] == "no-store"
        assert (await http.post(token, data={**exchange, "code": c, "code_verifier": v})).json()[
            "error"
        ] == "invalid_grant"

        # Requests the provider refuses: never redirected to an unregistered URI.
        bad_uri = await http.get(authorize, params=params(challenge, redirect_uri="http://evil/"))
        assert bad_uri.status_code == 400
        assert "evil" not in bad_uri.headers.get("location", "")
        plain = await http.get(
            authorize,
            params=params(challenge, code_challenge_method="plain"),
            follow_redirects=False,
        )
        assert plain.status_code == 303
        assert "error=invalid_request" in plain.headers["location"]
        unknown = await http.get(authorize, params=params(challenge, client_id="meshssh"))
        assert unknown.status_code == 400

    claims = jwt.decode(ok.json()["id_token"], options={"verify_signature": False})
    assert (claims["aud"], claims["azp"], claims["nonce"], claims["sub"]) == (
        CLIENT,
        CLIENT,
        "n-0S6",
        "alice",
    )
    config = JwtConfig(issuer=issuer, audiences=(CLIENT,))
    validated = JwtValidator(config, (await kv.wait_snapshot()).keys).validate(
        ok.json()["id_token"]
    )
    assert validated.user_id == "alice"
