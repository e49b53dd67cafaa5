"""A stand-in for meshssh-authn's token exchange on the bus (SPEC §6), for client tests.

authn's real exchange service is built separately (issue 15); until it is merged, this small
responder answers ``meshssh.authn.v1.req.token-exchange.*`` on a real nats-server with the
real wire messages. It mints JWT-shaped tokens (unsigned: the stand-in SSH peer checks them
against what was minted) with ``aud`` = ``meshssh:peer:<target>``, a fresh ``jti`` and
``exp`` 120 s ahead, records every request, and can be told to refuse.

Example::

    async with ExchangeResponder.serve(nc) as authn:
        ...
        assert [r.target_peer for r in authn.requests] == ["server-1"]
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from meshssh_common import codec, subjects
from meshssh_common.wire.authn import TokenExchangeReply, TokenExchangeRequest, peer_audience


def _part(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def claims(token: str) -> dict[str, object]:
    """The payload of a JWT-shaped token (not verified)."""
    body = token.split(".")[1]
    payload: dict[str, object] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return payload


@dataclass
class ExchangeResponder:
    """Records requests (with the subject they came on) and mints one token per request."""

    requests: list[TokenExchangeRequest] = field(default_factory=list)
    subjects_seen: list[str] = field(default_factory=list)
    minted: list[str] = field(default_factory=list)
    refuse: tuple[str, str] | None = None  # (code, description) to answer with instead
    silent: bool = False  # record, never answer (an authn that hangs)
    nc: NATS | None = None

    async def _handle(self, msg: Msg) -> None:
        request = codec.decode(msg.data, TokenExchangeRequest)
        self.requests.append(request)
        self.subjects_seen.append(msg.subject)
        if self.silent:
            return
        if self.refuse is not None:
            code, text = self.refuse
            assert self.nc is not None
            headers = {ERROR_CODE_HEADER: code, ERROR_HEADER: text}
            await self.nc.publish(msg.reply, b"", headers=headers)
            return
        now = int(time.time())
        token = ".".join(
            (
                _part({"alg": "EdDSA", "kid": "x-0123456789abcdef", "typ": "JWT"}),
                _part(
                    {
                        "iss": "urn:meshssh:authn",
                        "aud": peer_audience(request.target_peer),
                        "sub": claims(request.subject_token).get("sub", ""),
                        "iat": now,
                        "exp": now + 120,
                        "jti": secrets.token_urlsafe(16),
                    }
                ),
                "c3RhbmQtaW4",
            )
        )
        self.minted.append(token)
        await msg.respond(codec.encode(TokenExchangeReply(access_token=token, expires_in=120)))

    @classmethod
    @contextlib.asynccontextmanager
    async def serve(cls, nc: NATS) -> AsyncIterator[ExchangeResponder]:
        """Answer exchanges on ``nc`` (an identity allowed to subscribe there) while open."""
        responder = cls(nc=nc)
        sub = await nc.subscribe(subjects.AUTHN_TOKEN_EXCHANGE_ALL, cb=responder._handle)
        await nc.flush(timeout=5)
        try:
            yield responder
        finally:
            await sub.unsubscribe()
