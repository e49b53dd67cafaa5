"""The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636) for browser clients.

The embedded provider serves it for one registered client (the policy dashboard): its id is
``--dashboard-client-id`` and its redirect URIs ``--dashboard-redirect-uri`` (exact match,
repeatable); with no redirect URI the grant is off. Only ``S256`` challenges are accepted
(``plain`` would let whoever sees the redirect use the code). A code lives
:data:`CODE_TTL` seconds and works once; redeeming it needs the client id, the same redirect
URI and the verifier whose SHA-256 is the challenge. Codes live in this replica's memory
(bounded): behind several authn replicas the login and the token request must reach the same
one (session affinity), as the device flow's KV-backed grants need not.

Example::

    codes = AuthCodes(client_id="meshssh-dashboard", redirect_uris=("http://x/auth/callback",))
    request = codes.check_request(params)              # raises AuthorizeError
    code = codes.issue(request, username="alice")
    grant = codes.redeem(code, client_id=..., redirect_uri=..., verifier=...)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["CODE_TTL", "AuthCodes", "AuthRequest", "AuthorizeError", "CodeGrant"]

CODE_TTL = 60.0
_MAX_CODES = 10_000
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256, no padding
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 §4.1
_STATE = re.compile(r"^[\x21-\x7e]{0,512}$")


class AuthorizeError(Exception):
    """A refused authorization request; ``redirect`` False: never send the browser back."""

    def __init__(self, error: str, description: str, *, redirect: bool) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect = redirect


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A checked authorization request (what the login form carries along)."""

    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    scope: str
    nonce: str


@dataclass(frozen=True, slots=True)
class CodeGrant:
    """What a redeemed code stands for."""

    username: str
    scope: str
    nonce: str
    client_id: str


@dataclass(frozen=True, slots=True)
class _Code:
    request: AuthRequest
    username: str
    expires: float


class AuthCodes:
    """Issues and redeems authorization codes for the registered browser client."""

    def __init__(
        self,
        *,
        client_id: str,
        redirect_uris: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self.redirect_uris = redirect_uris
        self._clock = clock
        self._codes: dict[str, _Code] = {}

    @property
    def enabled(self) -> bool:
        """True when a redirect URI is registered."""
        return bool(self.redirect_uris)

    def check_request(self, params: Mapping[str, str]) -> AuthRequest:
        """Validate the authorization endpoint's query (or the login form's hidden fields).

        Raises:
            AuthorizeError: ``redirect`` False for an unknown client or redirect URI (shown on
                the page), True otherwise (sent back to the client).
        """
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if not self.enabled or client_id != self.client_id:
            raise AuthorizeError("unauthorized_client", "unknown client", redirect=False)
        if redirect_uri not in self.redirect_uris:
            raise AuthorizeError(
                "invalid_request", "redirect_uri is not registered", redirect=False
            )
        state = params.get("state", "")
        if not _STATE.match(state):
            raise AuthorizeError("invalid_request", "state is malformed", redirect=False)
        if params.get("response_type", "") != "code":
            raise AuthorizeError(
                "unsupported_response_type", "only response_type=code", redirect=True
            )
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method", "") != "S256" or not _CHALLENGE.match(challenge):
            raise AuthorizeError(
                "invalid_request",
                "PKCE with code_challenge_method=S256 is required",
                redirect=True,
            )
        nonce = params.get("nonce", "")
        if len(nonce) > 256 or not _STATE.match(nonce):
            raise AuthorizeError("invalid_request", "nonce is malformed", redirect=True)
        return AuthRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=challenge,
            scope=params.get("scope", "")[:512],
            nonce=nonce,
        )

    def issue(self, request: AuthRequest, *, username: str) -> str:
        """A fresh single-use code for ``username`` signed in on ``request``."""
        now = self._clock()
        if len(self._codes) >= _MAX_CODES:
            for key in [k for k, c in self._codes.items() if c.expires <= now]:
                del self._codes[key]
            while len(self._codes) >= _MAX_CODES:
                del self._codes[next(iter(self._codes))]  # the oldest
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(request, username, now + CODE_TTL)
        return code

    def redeem(
        self, code: str, *, client_id: str, redirect_uri: str, verifier: str
    ) -> CodeGrant | None:
        """The grant behind ``code`` when every check passes, else None (``invalid_grant``).

        The code is spent by the first attempt, right or wrong.
        """
        found = self._codes.pop(code, None)
        if found is None or found.expires <= self._clock():
            return None
        req = found.request
        if client_id != req.client_id or redirect_uri != req.redirect_uri:
            return None
        if not _VERIFIER.match(verifier):
            return None
        digest = hashlib.sha256(verifier.encode()).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not hmac.compare_digest(expected, req.code_challenge):
            return None
        return CodeGrant(
            username=found.username, scope=req.scope, nonce=req.nonce, client_id=req.client_id
        )
