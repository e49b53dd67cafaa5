"""Tokens the embedded provider signs: an access token for SSH and an OIDC ID token.

Both are JWTs signed by the key ring's current key, ``kid`` in the header. The access token's
``aud`` is the configured audience list (what SSH servers check); the ID token's ``aud`` is
the client id, as OIDC requires. ``iat`` is the moment of issue (the device-code poll that
collects the token), never back-dated, so a fresh token has the whole max-age window.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshssh_authn.key_ring import KeyRing
from meshssh_authn.signing_keys import sign
from meshssh_authn.users import User

__all__ = ["IssuedTokens", "TokenIssuer"]


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """The token endpoint's answer for one user."""

    access_token: str
    id_token: str
    expires_in: int
    scope: str


class TokenIssuer:
    """Signs tokens for users of the embedded provider."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str,
        audiences: Sequence[str],
        client_id: str,
        ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ring = ring
        self.issuer = issuer
        self._audiences = list(audiences)
        self._client_id = client_id
        self._ttl = ttl
        self._clock = clock

    async def issue(
        self, username: str, user: User, scope: str, *, client_id: str = "", nonce: str = ""
    ) -> IssuedTokens:
        """Sign an access token and an ID token for ``username`` now.

        ``client_id`` names another registered client (the ID token's ``aud`` and ``azp``);
        ``nonce`` is echoed in the ID token (authorization code grant).

        Raises:
            Unavailable: no signing key could be established.
        """
        key, private = await self._ring.signing_key()
        now = int(self._clock())
        client = client_id or self._client_id
        common = {
            "iss": self.issuer,
            "sub": username,
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl,
            "auth_time": now,
            "azp": client,
        }
        profile: dict[str, object] = {"preferred_username": username, "groups": list(user.groups)}
        if user.email:
            # The users file is written by an admin: its addresses count as verified.
            profile["email"] = user.email
            profile["email_verified"] = True
        if user.name:
            profile["name"] = user.name
        access = {
            **common,
            **profile,
            "aud": self._audiences[0] if len(self._audiences) == 1 else self._audiences,
            "client_id": client,
            "scope": scope,
            "jti": secrets.token_urlsafe(16),
        }
        ident = {**common, **profile, "aud": client, "jti": secrets.token_urlsafe(16)}
        if nonce:
            ident["nonce"] = nonce
        return IssuedTokens(
            access_token=sign(key, private, access, typ="at+jwt"),
            id_token=sign(key, private, ident),
            expires_in=self._ttl,
            scope=scope,
        )
