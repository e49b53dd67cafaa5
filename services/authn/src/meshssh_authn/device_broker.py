"""The device-flow broker on NATS: ``device-start`` / ``device-poll`` for SSH servers.

An SSH server whose client cannot send a token (keyboard-interactive "browser check", SPEC
§6) asks authn to start a device flow, shows the user the URL and code, and polls. With the
embedded provider the broker calls it directly; with an external provider it speaks RFC 8628
over HTTP to the endpoints in the published client config. The token handed back is the one
SSH servers validate (the access token, or the ID token with ``--use-id-token``).
"""

from __future__ import annotations

from typing import Any

import httpx

from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.device_grants import DeviceContext, PollStatus
from meshssh_authn.embedded_provider import DEVICE_GRANT, EmbeddedProvider
from meshssh_common import subjects
from meshssh_common.errors import BadRequest, Unavailable
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
    JwksSnapshot,
    OidcClientConfig,
)

__all__ = ["DeviceBroker"]

_RFC8628_STATUS: dict[str, PollStatus] = {
    "authorization_pending": "pending",
    "slow_down": "slow_down",
    "access_denied": "denied",
    "expired_token": "expired",
    "invalid_grant": "expired",
}


class DeviceBroker:
    """Serves the two broker endpoints for either kind of provider."""

    def __init__(
        self,
        *,
        embedded: EmbeddedProvider | None,
        snapshots: TypedKV[JwksSnapshot],
        http: httpx.AsyncClient,
        metrics: AuthnMetrics,
        log: BoundLogger,
    ) -> None:
        self._embedded = embedded
        self._snapshots = snapshots
        self._http = http
        self._metrics = metrics
        self._log = log

    async def _client(self) -> OidcClientConfig:
        entry = await self._snapshots.get(subjects.JWKS_KEY)
        if entry is None or entry.value.client is None:
            raise Unavailable("the identity provider offers no device flow (not discovered yet)")
        return entry.value.client

    async def start(self, req: DeviceStartRequest) -> DeviceStartReply:
        """Start a device flow on behalf of an SSH server.

        Raises:
            Unavailable: the provider could not be reached or refused.
        """
        if self._embedded is not None:
            c = self._embedded.config
            context = DeviceContext(  # shown on the confirm page (RFC 8628 §5.4)
                server_peer=req.peer_id[:64],
                server_peer_name=req.peer_name[:64],
                local_user=req.login_hint[:64],
                source_addr=req.source_addr[:64],
                source_peer=req.source_peer[:64],
                source_peer_name=req.source_peer_name[:64],
            )
            started = await self._embedded.authorize_device(
                c.client_id, " ".join(c.scopes), context
            )
            verify = self._embedded.url("/device")
            return DeviceStartReply(
                device_code=started.device_code,
                user_code=started.user_code,
                verification_uri=verify,
                verification_uri_complete=f"{verify}?user_code={started.user_code}",
                expires_in=started.expires_in,
                interval=started.interval,
            )
        client = await self._client()
        data = {"client_id": client.client_id, "scope": " ".join(client.scopes)}
        if client.audience:
            data["audience"] = client.audience
        body = await self._post(client.device_authorization_endpoint, data)
        try:
            reply = DeviceStartReply(
                device_code=str(body["device_code"]),
                user_code=str(body["user_code"]),
                # Google spells it verification_url.
                verification_uri=str(body.get("verification_uri") or body["verification_url"]),
                verification_uri_complete=str(body.get("verification_uri_complete", "")),
                expires_in=max(0, int(body.get("expires_in", 600))),
                interval=max(0, int(body.get("interval", 5))),
            )
        except (KeyError, TypeError, ValueError) as e:
            self._metrics.device_flows.labels(outcome="error").inc()
            raise Unavailable(f"device authorization answer lacks {e}") from e
        self._metrics.device_flows.labels(outcome="started").inc()
        self._log.info("device flow started", extra={"peer": req.peer_id[:64]})
        return reply

    async def poll(self, req: DevicePollRequest) -> DevicePollReply:
        """Poll a flow started with :meth:`start`; ``ok`` carries the token.

        Raises:
            BadRequest: the device code is empty or too long.
            Unavailable: the provider could not be reached.
        """
        if not req.device_code or len(req.device_code) > 4096:
            raise BadRequest("device_code must be 1..4096 characters")
        if self._embedded is not None:
            c = self._embedded.config
            status, issued = await self._embedded.poll_token(req.device_code, c.client_id)
            if status == "ok" and issued is not None:
                token = issued.id_token if c.use_id_token else issued.access_token
                return DevicePollReply(status="ok", token=token)
            return DevicePollReply(status=status)
        client = await self._client()
        data = {"grant_type": DEVICE_GRANT, "device_code": req.device_code}
        data["client_id"] = client.client_id
        body = await self._post(client.token_endpoint, data, accept_errors=True)
        error = body.get("error")
        if isinstance(error, str):
            polled = _RFC8628_STATUS.get(error)
            if polled is None:
                self._metrics.device_flows.labels(outcome="error").inc()
                raise Unavailable(f"token endpoint refused: {error[:64]}")
            if polled in ("denied", "expired"):
                self._metrics.device_flows.labels(outcome=polled).inc()
            return DevicePollReply(status=polled)
        collected = body.get("id_token" if client.use_id_token else "access_token")
        if not isinstance(collected, str) or not collected:
            self._metrics.device_flows.labels(outcome="error").inc()
            raise Unavailable("token endpoint answered without the expected token")
        self._metrics.device_flows.labels(outcome="completed").inc()
        return DevicePollReply(status="ok", token=collected)

    async def _post(
        self, url: str, data: dict[str, str], *, accept_errors: bool = False
    ) -> dict[str, Any]:
        try:
            resp = await self._http.post(url, data=data, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            self._metrics.device_flows.labels(outcome="error").inc()
            raise Unavailable(f"POST {url}: {type(e).__name__}") from e
        ok = resp.status_code == 200 or (accept_errors and resp.status_code in (400, 401, 403))
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not ok or not isinstance(body, dict):
            self._metrics.device_flows.labels(outcome="error").inc()
            raise Unavailable(f"POST {url}: HTTP {resp.status_code}")
        return body
