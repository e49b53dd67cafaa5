"""The OIDC device authorization grant (RFC 8628) over HTTP: the single client of the house.

Where the provider is: the management plane (``GET <management-url>/api/v1/auth/config``)
or OIDC discovery (``<issuer>/.well-known/openid-configuration``). Then a flow is started
(device authorization) and the token endpoint polled: ``authorization_pending`` waits,
``slow_down`` adds 5 s to the interval (RFC 8628 §3.5), ``access_denied`` and
``expired_token`` end the flow. authn's broker relays single polls to SSH servers
(:meth:`DeviceFlowClient.poll`); ``meshssh login`` and the agent wait for the end
(:meth:`DeviceFlowClient.wait`).

Errors are typed: :class:`DeviceFlowDenied` (the user refused), :class:`DeviceFlowExpired`
(the code expired before approval), both :class:`~meshssh_common.errors.Denied` with a text
that may be shown to the user; :class:`~meshssh_common.errors.Unavailable` when the provider
is unreachable or answers something RFC 8628 does not allow.

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
from typing import Any, Literal

import httpx
import msgspec

from meshssh_common.errors import Denied, Unavailable
from meshssh_common.wire import OidcClientConfig

__all__ = [
    "DEVICE_GRANT",
    "DeviceAuthorization",
    "DeviceFlowClient",
    "DeviceFlowDenied",
    "DeviceFlowExpired",
    "Poll",
    "PollStatus",
    "TokenSet",
    "discover_client_config",
    "fetch_client_config",
]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5

PollStatus = Literal["pending", "slow_down", "denied", "expired", "ok"]

# RFC 8628 §3.5 error codes; invalid_grant is what some providers say for a used-up code.
_ERRORS: dict[str, PollStatus] = {
    "authorization_pending": "pending",
    "slow_down": "slow_down",
    "access_denied": "denied",
    "expired_token": "expired",
    "invalid_grant": "expired",
}


class DeviceFlowDenied(Denied):
    """The user refused the sign-in."""

    def __init__(self) -> None:
        super().__init__("sign-in refused", public="the sign-in was refused")


class DeviceFlowExpired(Denied):
    """The device code expired (or was used up) before the user approved."""

    def __init__(self, why: str = "device code expired") -> None:
        super().__init__(why, public="the sign-in code expired; try again")


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


@dataclass(frozen=True, slots=True)
class Poll:
    """One answer of the token endpoint; ``tokens`` is set when ``status`` is ``ok``."""

    status: PollStatus
    tokens: TokenSet | None = None


def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as e:
        raise Unavailable(f"{what}: HTTP {resp.status_code}, not JSON") from e
    if not isinstance(body, dict):
        raise Unavailable(f"{what}: HTTP {resp.status_code}, not a JSON object")
    return body


async def _get(http: httpx.AsyncClient, url: str) -> httpx.Response:
    try:
        return await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as e:
        raise Unavailable(f"GET {url}: {type(e).__name__}: {e}") from e


async def fetch_client_config(http: httpx.AsyncClient, management_url: str) -> OidcClientConfig:
    """Ask the management plane which provider and client a login must use.

    Raises:
        Unavailable: the management plane did not answer with a client config.
    """
    url = management_url.rstrip("/") + "/api/v1/auth/config"
    resp = await _get(http, url)
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
    doc = _json(await _get(http, url), f"GET {url}")
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
            raise Unavailable(
                f"device authorization refused: {str(body.get('error', status))[:64]}"
            )
        try:
            return DeviceAuthorization(
                device_code=str(body["device_code"]),
                user_code=str(body["user_code"]),
                # Google spells it verification_url.
                verification_uri=str(body.get("verification_uri") or body["verification_url"]),
                verification_uri_complete=str(body.get("verification_uri_complete", "")),
                expires_in=max(1, int(body.get("expires_in", 600))),
                interval=max(0, int(body.get("interval", 5))),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise Unavailable(f"device authorization answer lacks {e}") from e

    async def poll(self, device_code: str) -> Poll:
        """Ask the token endpoint once about ``device_code``.

        Raises:
            Unavailable: unreachable, an error RFC 8628 does not define, or a success
                without the expected token.
        """
        c = self.config
        data = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": c.client_id}
        status, body = await self._post(c.token_endpoint, data)
        if status == 200:
            return Poll("ok", self._tokens(body))
        error = body.get("error")
        polled = _ERRORS.get(error) if isinstance(error, str) else None
        if polled is None:
            raise Unavailable(f"token endpoint answered HTTP {status}: {str(error)[:64]!r}")
        return Poll(polled)

    async def wait(self, auth: DeviceAuthorization) -> TokenSet:
        """Poll until the user approves, refuses, or the code expires.

        Raises:
            DeviceFlowDenied: the user refused.
            DeviceFlowExpired: the code expired before approval.
            Unavailable: see :meth:`poll`.
        """
        deadline = self._clock() + auth.expires_in
        interval = float(auth.interval)
        while True:
            if self._clock() >= deadline:
                raise DeviceFlowExpired()
            polled = await self.poll(auth.device_code)
            if polled.tokens is not None:
                return polled.tokens
            if polled.status == "slow_down":
                interval += SLOW_DOWN_STEP
            elif polled.status == "denied":
                raise DeviceFlowDenied()
            elif polled.status == "expired":
                raise DeviceFlowExpired()
            await self._sleep(interval)

    async def _post(self, url: str, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            resp = await self._http.post(url, data=data, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise Unavailable(f"POST {url}: {type(e).__name__}: {e}") from e
        return resp.status_code, _json(resp, f"POST {url}")

    def _tokens(self, body: dict[str, Any]) -> TokenSet:
        access = body.get("access_token")
        ident = body.get("id_token")
        chosen = ident if self.config.use_id_token else access
        if not isinstance(chosen, str) or not chosen:
            kind = "id_token" if self.config.use_id_token else "access_token"
            raise Unavailable(f"the token endpoint returned no {kind}")
        expires = body.get("expires_in")
        return TokenSet(
            token=chosen,
            access_token=access if isinstance(access, str) else "",
            id_token=ident if isinstance(ident, str) else "",
            expires_in=int(expires) if isinstance(expires, int | float) else None,
        )
