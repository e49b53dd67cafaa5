"""The OIDC device authorization grant (RFC 8628) from the client side, and where to find it.

The client config (:class:`OidcClientConfig`) comes from the management plane
(``GET <management-url>/api/v1/auth/config``) or, given an issuer, from OIDC discovery.

Example::

    async with httpx.AsyncClient() as http:
        config = await fetch_client_config(http, "http://127.0.0.1:8080")
        flow = DeviceFlowClient(config, http)
        auth = await flow.start()
        show(auth.verification_uri, auth.user_code)
        tokens = await flow.wait(auth)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from meshssh_common.errors import BadRequest, Denied, Unavailable
from meshssh_common.wire import OidcClientConfig

__all__ = [
    "DEVICE_GRANT",
    "DeviceAuthorization",
    "DeviceFlowClient",
    "TokenSet",
    "discover_client_config",
    "fetch_client_config",
]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_SLOW_DOWN_STEP = 5


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """A started device flow: what to show the user and what to poll with."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The token endpoint's answer; ``token`` is the one to present over SSH."""

    token: str
    access_token: str
    id_token: str
    expires_in: int | None


async def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as e:
        raise Unavailable(f"{what}: HTTP {resp.status_code}, not JSON") from e
    if not isinstance(body, dict):
        raise Unavailable(f"{what}: HTTP {resp.status_code}, not a JSON object")
    return body


async def fetch_client_config(http: httpx.AsyncClient, management_url: str) -> OidcClientConfig:
    """Ask the management plane which provider and client ``meshssh login`` must use.

    Raises:
        Unavailable: the management plane did not answer with a client config.
    """
    url = management_url.rstrip("/") + "/api/v1/auth/config"
    try:
        resp = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as e:
        raise Unavailable(f"GET {url}: {type(e).__name__}: {e}") from e
    if resp.status_code != 200:
        raise Unavailable(f"GET {url}: HTTP {resp.status_code}")
    try:
        return msgspec.json.decode(resp.content, type=OidcClientConfig)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        raise Unavailable(f"GET {url}: not an OIDC client config: {e}") from e


async def discover_client_config(
    http: httpx.AsyncClient,
    issuer: str,
    client_id: str,
    *,
    scopes: tuple[str, ...] = ("openid", "email", "profile"),
    use_id_token: bool = False,
) -> OidcClientConfig:
    """Build a client config from ``<issuer>/.well-known/openid-configuration``.

    Raises:
        Unavailable: unreachable, or the provider has no device authorization endpoint.
    """
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        resp = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as e:
        raise Unavailable(f"GET {url}: {type(e).__name__}: {e}") from e
    doc = await _json(resp, f"GET {url}")
    device = doc.get("device_authorization_endpoint")
    token = doc.get("token_endpoint")
    if not isinstance(device, str) or not isinstance(token, str):
        raise Unavailable(f"{issuer} offers no device authorization grant")
    return OidcClientConfig(
        issuer=str(doc.get("issuer", issuer)),
        client_id=client_id,
        device_authorization_endpoint=device,
        token_endpoint=token,
        scopes=scopes,
        use_id_token=use_id_token,
    )


class DeviceFlowClient:
    """Runs device flows against one provider and client."""

    def __init__(
        self,
        config: OidcClientConfig,
        http: httpx.AsyncClient,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._http = http
        self._sleep = sleep
        self._clock = clock

    async def _post(self, url: str, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            resp = await self._http.post(url, data=data, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise Unavailable(f"POST {url}: {type(e).__name__}: {e}") from e
        return resp.status_code, await _json(resp, f"POST {url}")

    async def start(self) -> DeviceAuthorization:
        """Ask for a device code and a user code.

        Raises:
            Unavailable: the provider is unreachable or refused (the message says why).
        """
        c = self.config
        data = {"client_id": c.client_id, "scope": " ".join(c.scopes)}
        if c.audience:
            data["audience"] = c.audience
        status, body = await self._post(c.device_authorization_endpoint, data)
        if status != 200:
            raise Unavailable(f"device authorization refused: {body.get('error', status)}")
        try:
            return DeviceAuthorization(
                device_code=str(body["device_code"]),
                user_code=str(body["user_code"]),
                verification_uri=str(body.get("verification_uri") or body["verification_url"]),
                verification_uri_complete=str(body.get("verification_uri_complete", "")),
                expires_in=max(1, int(body.get("expires_in", 600))),
                interval=max(0, int(body.get("interval", 5))),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise Unavailable(f"device authorization answer lacks {e}") from e

    async def wait(self, auth: DeviceAuthorization) -> TokenSet:
        """Poll the token endpoint until the user approves, refuses, or the code expires.

        Raises:
            Denied: the user refused, or the code expired before approval.
            Unavailable: the provider is unreachable or answered with an unknown error.
            BadRequest: the provider answered success without the expected token.
        """
        c = self.config
        deadline = self._clock() + auth.expires_in
        interval = float(auth.interval)
        data = {"grant_type": DEVICE_GRANT, "device_code": auth.device_code}
        data["client_id"] = c.client_id
        while True:
            if self._clock() >= deadline:
                raise Denied("device code expired", public="the sign-in code expired; try again")
            status, body = await self._post(c.token_endpoint, data)
            if status == 200:
                return self._tokens(body)
            error = body.get("error")
            if error == "authorization_pending":
                pass
            elif error == "slow_down":
                interval += _SLOW_DOWN_STEP
            elif error == "access_denied":
                raise Denied("sign-in refused", public="the sign-in was refused")
            elif error in ("expired_token", "invalid_grant"):
                raise Denied(f"device code {error}", public="the sign-in code expired; try again")
            else:
                raise Unavailable(f"token endpoint answered HTTP {status}: {error!r}")
            await self._sleep(interval)

    def _tokens(self, body: dict[str, Any]) -> TokenSet:
        access = body.get("access_token")
        ident = body.get("id_token")
        chosen = ident if self.config.use_id_token else access
        if not isinstance(chosen, str) or not chosen:
            kind = "id_token" if self.config.use_id_token else "access_token"
            raise BadRequest(f"the token endpoint returned no {kind}")
        expires = body.get("expires_in")
        return TokenSet(
            token=chosen,
            access_token=access if isinstance(access, str) else "",
            id_token=ident if isinstance(ident, str) else "",
            expires_in=int(expires) if isinstance(expires, int | float) else None,
        )
