"""A recording HTTP front of policy's registration endpoint: what the agent sends, on the wire.

:class:`RegistrationFront` is a real HTTP server in the test that forwards
``POST /api/v1/peers/register`` to the real meshssh-policy and keeps every request body, so a
test sees exactly what the agent sent (its NATS public key, never the seed). It can also:

- stand for a management plane that does not answer (``down``: 503 with policy's error body,
  as a load balancer in front of a stopped policy answers);
- shorten the JWTs policy issues (``ttl``). Policy's shortest ``--peer-creds-ttl`` is 60 s, too
  long to watch renewals and expiries in a test, so the front re-signs the JWT for the same
  key with the same permissions and the same account signing key (the bus keys policy runs
  with), for ``ttl`` seconds. Everything else in the reply is policy's own.

Example::

    front = await RegistrationFront.start(policy.api, policy.bus)
    ... "--management-url", front.url ...
    requests = front.requests()          # decoded RegisterRequests
    await front.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshssh_common import codec
from meshssh_common.bus_keys import BusKeys
from meshssh_common.bus_permissions import inbox_prefix, peer_permissions
from meshssh_common.http_server import HttpServer
from meshssh_common.nats_jwt import decode_claims
from meshssh_common.wire import RegisterReply, RegisterRequest

__all__ = ["RegistrationFront"]

PATH = "/api/v1/peers/register"


class RegistrationFront:
    """See the module docstring."""

    def __init__(self, upstream: str, bus: BusKeys) -> None:
        self.upstream = upstream
        self.bus = bus
        self.bodies: list[bytes] = []
        self.answers: list[int] = []  # the status of each answer
        self.down = False
        self.ttl: float | None = None
        self._server = HttpServer(
            Starlette(routes=[Route(PATH, self._register, methods=["POST"])]), "127.0.0.1:0"
        )
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, upstream: str, bus: BusKeys) -> RegistrationFront:
        """Serve on a port of its own, forwarding to policy's API at ``upstream``."""
        front = cls(upstream, bus)
        front._task = asyncio.create_task(front._server.serve())
        return front

    @property
    def url(self) -> str:
        """What the agent gets as ``--management-url``."""
        return self._server.url

    def requests(self) -> list[RegisterRequest]:
        """Every request body, decoded."""
        return [codec.decode(body, RegisterRequest) for body in self.bodies]

    async def stop(self) -> None:
        """Stop serving."""
        self._server.stop()
        if self._task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._task

    async def _register(self, request: Request) -> Response:
        body = await request.body()
        self.bodies.append(body)
        if self.down:
            self.answers.append(503)
            return JSONResponse({"error": "policy is down", "code": "unavailable"}, 503)
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.post(
                self.upstream + PATH, content=body, headers={"Content-Type": "application/json"}
            )
        self.answers.append(reply.status_code)
        if reply.is_success and self.ttl is not None:
            return Response(self._shorten(body, reply.content), media_type="application/json")
        return Response(reply.content, reply.status_code, media_type="application/json")

    def _shorten(self, body: bytes, content: bytes) -> bytes:
        req = codec.decode(body, RegisterRequest)
        reply = codec.decode(content, RegisterReply)
        assert self.ttl is not None
        claims: dict[str, Any] = decode_claims(reply.nats_jwt)
        assert claims["sub"] == req.nats_key
        jwt = self.bus.mint(
            req.nats_key,
            name=str(claims.get("name", "")),
            permissions=peer_permissions(reply.peer_id, inbox_prefix(req.nats_key)),
            ttl=self.ttl,
        )
        expires = float(decode_claims(jwt)["exp"])
        return codec.encode(msgspec.structs.replace(reply, nats_jwt=jwt, nats_expires_at=expires))
