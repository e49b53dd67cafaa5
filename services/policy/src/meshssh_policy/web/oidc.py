"""Dashboard sign-in: OIDC authorization code with PKCE against the configured issuer.

The issuer is ``--oidc-issuer``, or by default the one meshssh-authn publishes in
``meshssh-jwks`` (the embedded provider on a local run). Its discovery document gives the
authorization and token endpoints. The ID token is validated like an SSH token (signature,
``iss``, ``exp``, ``iat`` age) with ``aud`` = ``--dashboard-client-id`` and the ``nonce`` of
this sign-in; the keys are the ones authn mirrors when the issuer is that one, else the
issuer's JWKS. The user id is the mesh's user-id claim, so dashboard users are the users of
the Users page. Pending sign-ins (state → verifier, nonce) live in memory for 10 minutes.

Browser terminals need a token the mesh itself accepts (authn's token exchange validates it as
sshd validates an IdP token: the issuer, audiences and keys authn publishes in
``meshssh-jwks``). The token endpoint's answer is searched for one, the access token first
(the embedded provider gives it the mesh audience), then the ID token (its ``aud`` is the
dashboard's client id: accepted only when the mesh's audiences list that id, e.g. an external
provider that issues no JWT access tokens, with ``MESHSSH_AUTHN_AUDIENCE`` naming the client
id). Neither accepted: the user can use the dashboard but not its terminals (the page says so).

Example::

    rp = OidcSignIn(mgmt)
    url, state = await rp.start(redirect_uri, next_path="/peers")
    token, next_path = await rp.finish(state, code, redirect_uri)
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from meshssh_common.errors import Denied, Unavailable
from meshssh_common.jwt_validation import JwtValidator, TokenRejected, ValidatedToken
from meshssh_common.wire import JwtConfig
from meshssh_policy.management import Management
from meshssh_policy.web.sessions import MeshToken

__all__ = ["OidcSignIn"]

_PENDING_TTL = 600.0
_MAX_PENDING = 10_000
_DISCOVERY_TTL = 300.0
_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class _Pending:
    verifier: str
    nonce: str
    next_path: str
    redirect_uri: str
    expires: float


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcSignIn:
    """The dashboard's OIDC relying party."""

    def __init__(self, mgmt: Management) -> None:
        self._mgmt = mgmt
        self._pending: dict[str, _Pending] = {}
        self._discovery: tuple[str, float, dict[str, Any]] | None = None

    def issuer(self) -> str:
        """The issuer to sign in with.

        Raises:
            Unavailable: none configured and authn has published none yet.
        """
        if self._mgmt.settings.oidc_issuer:
            return self._mgmt.settings.oidc_issuer
        snapshot = self._mgmt.state.jwks
        if snapshot is None:
            raise Unavailable(
                "sign-in is not available yet: meshssh-authn has not published its issuer "
                "(is meshssh-authn running?), and no --oidc-issuer is set"
            )
        return snapshot.jwt.issuer

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=_TIMEOUT) as http:
                resp = await http.get(url, headers={"Accept": "application/json"})
            resp.raise_for_status()
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as e:
            raise Unavailable(f"the identity provider did not answer {url}: {e}") from e
        if not isinstance(doc, dict):
            raise Unavailable(f"{url} is not a JSON object")
        return doc

    async def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document (cached for 5 minutes)."""
        issuer = self.issuer()
        cached = self._discovery
        if cached is not None and cached[0] == issuer and cached[1] > time.monotonic():
            return cached[2]
        doc = await self._get(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
            raise Unavailable(f"the discovery document of {issuer} names another issuer")
        if not isinstance(doc.get("authorization_endpoint"), str):
            raise Unavailable(
                f"{issuer} has no authorization endpoint (for the embedded provider, start "
                "meshssh-authn with --dashboard-redirect-uri <policy URL>/auth/callback)"
            )
        self._discovery = (issuer, time.monotonic() + _DISCOVERY_TTL, doc)
        return doc

    async def start(self, redirect_uri: str, *, next_path: str) -> tuple[str, str]:
        """The authorization URL to send the browser to, and the sign-in's ``state``."""
        meta = await self.metadata()
        now = time.monotonic()
        if len(self._pending) >= _MAX_PENDING:
            for key in [k for k, p in self._pending.items() if p.expires <= now]:
                del self._pending[key]
            while len(self._pending) >= _MAX_PENDING:
                del self._pending[next(iter(self._pending))]
        state = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(16)
        self._pending[state] = _Pending(
            verifier, nonce, next_path, redirect_uri, now + _PENDING_TTL
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._mgmt.settings.dashboard_client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile groups",
                "state": state,
                "nonce": nonce,
                "code_challenge": _challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(meta["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + query, state

    async def finish(self, state: str, code: str) -> tuple[ValidatedToken, str, MeshToken | None]:
        """Redeem the code of a pending sign-in.

        Returns:
            The validated ID token, where to go, and the token the mesh accepts (if any).

        Raises:
            Denied: unknown or expired state, refused code, or an ID token that fails a check.
            Unavailable: the provider could not be reached.
        """
        pending = self._pending.pop(state, None)
        if pending is None or pending.expires <= time.monotonic():
            raise Denied("unknown or expired sign-in", public="this sign-in expired; start again")
        meta = await self.metadata()
        settings = self._mgmt.settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": settings.dashboard_client_id,
            "code_verifier": pending.verifier,
        }
        try:
            async with httpx.AsyncClient(timeout=_TIMEOUT) as http:
                resp = await http.post(str(meta.get("token_endpoint", "")), data=form)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as e:
            raise Unavailable(f"the identity provider's token endpoint failed: {e}") from e
        if resp.status_code != 200 or not isinstance(body, dict) or "id_token" not in body:
            error = body.get("error", resp.status_code) if isinstance(body, dict) else "?"
            raise Denied(f"code refused: {error}", public="the identity provider refused")
        token = await self._validate(str(body["id_token"]), meta)
        if token.claims.get("nonce") != pending.nonce:
            raise Denied("ID token nonce mismatch", public="the sign-in did not match")
        candidates = (body.get("access_token"), body.get("id_token"))
        return token, pending.next_path, self.mesh_token(candidates, token.user_id)

    def mesh_token(self, candidates: tuple[object, ...], user_id: str) -> MeshToken | None:
        """The first of ``candidates`` the mesh accepts for ``user_id`` (None: none is)."""
        snapshot = self._mgmt.state.jwks
        if snapshot is None:
            return None
        validator = JwtValidator(snapshot.jwt, snapshot.keys)
        for candidate in candidates:
            if not isinstance(candidate, str) or not candidate:
                continue
            try:
                valid = validator.validate(candidate)
            except TokenRejected:
                continue
            if valid.user_id == user_id:
                until = min(valid.expires_at, valid.issued_at + snapshot.jwt.max_token_age)
                email = valid.claims.get("email")
                return MeshToken(candidate, until, email if isinstance(email, str) else "")
        return None

    async def _validate(self, id_token: str, meta: dict[str, Any]) -> ValidatedToken:
        issuer = self.issuer()
        snapshot = self._mgmt.state.jwks
        mirrored = snapshot is not None and snapshot.jwt.issuer.rstrip("/") == issuer.rstrip("/")
        claim = snapshot.jwt.user_id_claim if snapshot is not None else "sub"
        if mirrored and snapshot is not None:
            keys: Any = snapshot.keys
        else:
            keys = (await self._get(str(meta.get("jwks_uri", "")))).get("keys", [])
        config = JwtConfig(
            issuer=issuer, audiences=(self._mgmt.settings.dashboard_client_id,), user_id_claim=claim
        )
        try:
            return JwtValidator(config, keys).validate(id_token)
        except TokenRejected as e:
            raise Denied(f"ID token rejected: {e}", public="the sign-in token was refused") from e
