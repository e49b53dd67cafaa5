"""The device-flow broker on NATS: ``device-start`` / ``device-poll`` for SSH servers.

An SSH server whose client cannot send a token (keyboard-interactive "browser check", SPEC
§6) asks authn to start a device flow, shows the user the URL and code, and polls. With the
embedded provider the broker calls it directly; with an external provider it speaks RFC 8628
over HTTP (:mod:`meshssh_common.oidc_device`) to the endpoints in the published client config.
The token handed back is a per-peer token (issue 15) for the server that asked, minted from
the provider's token by :class:`TokenExchanger`. The server is the last token of the subject
(``device-start.<peer>``, ``device-poll.<peer>``), the only ones the bus lets it publish: a
hostile server cannot have a user approve a login whose token works at another peer, nor poll
a flow another server started.
"""

from __future__ import annotations

import hashlib
from typing import Final

import httpx
import msgspec

from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.device_grants import DeviceContext
from meshssh_authn.embedded_provider import EmbeddedProvider
from meshssh_authn.token_exchange import TokenExchanger, check_peer_id, requester_of
from meshssh_common import subjects
from meshssh_common.errors import BadRequest, Denied, Unavailable
from meshssh_common.kv import TypedKV
from meshssh_common.logs import BoundLogger
from meshssh_common.oidc_device import DeviceFlowClient
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
    JwksSnapshot,
)

__all__ = ["DeviceBroker", "DevicePeer"]


class DevicePeer(msgspec.Struct, frozen=True, kw_only=True):
    """The peer a device flow's token is for (KV ``meshssh-authn-devices``)."""

    peer_id: str


_START_PREFIX: Final = subjects.AUTHN_DEVICE_START_ALL[:-1]  # "...device-start."
_POLL_PREFIX: Final = subjects.AUTHN_DEVICE_POLL_ALL[:-1]


def _requester(subject: str, prefix: str) -> str:
    return check_peer_id(requester_of(subject, prefix))


def _peer_key(device_code: str) -> str:
    return "peer." + hashlib.sha256(device_code.encode()).hexdigest()


class DeviceBroker:
    """Serves the two broker endpoints for either kind of provider."""

    def __init__(
        self,
        *,
        embedded: EmbeddedProvider | None,
        snapshots: TypedKV[JwksSnapshot],
        peers: TypedKV[DevicePeer],
        exchanger: TokenExchanger,
        http: httpx.AsyncClient,
        metrics: AuthnMetrics,
        log: BoundLogger,
    ) -> None:
        self._embedded = embedded
        self._snapshots = snapshots
        self._peers = peers
        self._exchanger = exchanger
        self._http = http
        self._metrics = metrics
        self._log = log

    async def _flow(self) -> DeviceFlowClient:
        entry = await self._snapshots.get(subjects.JWKS_KEY)
        if entry is None or entry.value.client is None:
            raise Unavailable("the identity provider offers no device flow (not discovered yet)")
        return DeviceFlowClient(entry.value.client, self._http)

    async def start(self, req: DeviceStartRequest, subject: str) -> DeviceStartReply:
        """Start a device flow on behalf of the SSH server that asked on ``subject``.

        The requester is the last token of the subject (``device-start.<peer>``), the only one
        the bus lets that peer publish: the token the flow ends with is for it, whatever the
        payload says, so a server cannot have a user approve a login for another peer.

        Raises:
            BadRequest: the subject names no peer.
            Denied: the payload's ``peer_id`` names another peer than the requester.
            Unavailable: the provider could not be reached or refused.
        """
        requester = _requester(subject, _START_PREFIX)
        if req.peer_id and req.peer_id != requester:
            self._metrics.device_flows.labels(outcome="foreign_peer").inc()
            self._log.warning(
                "device flow for another peer refused",
                extra={"peer": requester, "claimed": req.peer_id[:64]},
            )
            raise Denied(
                f"peer {requester} asked for a device flow for {req.peer_id[:64]}",
                public="a server may start a browser check only for itself",
            )
        reply = await self._start(msgspec.structs.replace(req, peer_id=requester))
        await self._peers.put(_peer_key(reply.device_code), DevicePeer(peer_id=requester))
        return reply

    async def _start(self, req: DeviceStartRequest) -> DeviceStartReply:
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
        flow = await self._flow()
        try:
            auth = await flow.start()
        except Unavailable:
            self._metrics.device_flows.labels(outcome="error").inc()
            raise
        self._metrics.device_flows.labels(outcome="started").inc()
        self._log.info("device flow started", extra={"peer": req.peer_id[:64]})
        return DeviceStartReply(
            device_code=auth.device_code,
            user_code=auth.user_code,
            verification_uri=auth.verification_uri,
            verification_uri_complete=auth.verification_uri_complete,
            expires_in=auth.expires_in,
            interval=auth.interval,
        )

    async def poll(self, req: DevicePollRequest, subject: str) -> DevicePollReply:
        """Poll a flow started with :meth:`start`; ``ok`` carries a per-peer token.

        Only the peer that started the flow may poll it (``device-poll.<peer>``): another
        peer that learnt the device code gets a refusal, and the provider is not asked.

        Raises:
            BadRequest: the device code is empty or too long, or the subject names no peer.
            Denied: the flow was started by another peer (or by none), or the provider's token
                does not validate.
            Unavailable: the provider could not be reached.
        """
        requester = _requester(subject, _POLL_PREFIX)
        if not req.device_code or len(req.device_code) > 4096:
            raise BadRequest("device_code must be 1..4096 characters")
        entry = await self._peers.get(_peer_key(req.device_code))
        if entry is not None and entry.value.peer_id != requester:
            self._metrics.device_flows.labels(outcome="foreign_poll").inc()
            raise Denied(
                f"peer {requester} polled a device flow it did not start",
                public="no browser check of this server has that code; start the check again",
            )
        polled = await self._poll(req)
        if polled.status != "ok":
            return polled  # a finished flow's entry is gone: its code polls as expired
        if entry is None:
            raise Denied("device flow started without a peer", public="start the check again")
        exchanged = await self._exchanger.exchange(polled.token, entry.value.peer_id)
        await self._peers.delete(_peer_key(req.device_code))
        return DevicePollReply(status="ok", token=exchanged.access_token)

    async def _poll(self, req: DevicePollRequest) -> DevicePollReply:
        if not req.device_code or len(req.device_code) > 4096:
            raise BadRequest("device_code must be 1..4096 characters")
        if self._embedded is not None:
            c = self._embedded.config
            status, issued = await self._embedded.poll_token(req.device_code, c.client_id)
            if status == "ok" and issued is not None:
                token = issued.id_token if c.use_id_token else issued.access_token
                return DevicePollReply(status="ok", token=token)
            return DevicePollReply(status=status)
        flow = await self._flow()
        try:
            polled = await flow.poll(req.device_code)
        except Unavailable:
            self._metrics.device_flows.labels(outcome="error").inc()
            raise
        if polled.status in ("denied", "expired"):
            self._metrics.device_flows.labels(outcome=polled.status).inc()
        if polled.tokens is None:
            return DevicePollReply(status=polled.status)
        self._metrics.device_flows.labels(outcome="completed").inc()
        return DevicePollReply(status="ok", token=polled.tokens.token)
