"""REST routes of the bus identities: peer registration (public) and revocations (admin).

``POST /api/v1/peers/register`` needs no admin token: the setup key, or the peer's id and
credential, in the body authenticate it. The body is the msgspec JSON of
:class:`~meshssh_common.wire.RegisterRequest`, the reply that of
:class:`~meshssh_common.wire.RegisterReply` (with ``nats_jwt``). Refusals are
``{"error": ..., "code": ...}``: 400 a malformed field, 403 a refused key or credential, 503
no ``--bus-keys`` or the state is not answering.

``POST /api/v1/bus/revocations {"public_key": "U..."}`` (admin) revokes a user key, e.g. the
old key of a service whose creds ``meshssh-policy init --rotate`` replaced;
``GET /api/v1/bus/revocations`` lists what is revoked.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from meshssh_common import codec
from meshssh_common.errors import BadRequest, Unavailable
from meshssh_common.wire import RegisterRequest
from meshssh_policy.api_deps import MgmtDep
from meshssh_policy.bus_revocations import BusRevocations

__all__ = ["admin_router", "public_router"]

_MAX_BODY = 64 * 1024

public_router = APIRouter(prefix="/api/v1", tags=["public"])
admin_router = APIRouter(prefix="/api/v1", tags=["bus"])


class RevokeBody(BaseModel):
    """A user key to revoke."""

    public_key: str = Field(description='a NATS user public key ("U...", 56 characters)')


@public_router.post(
    "/peers/register",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "RegisterRequest (msgspec JSON, tag policy.register.v1)",
        }
    },
)
async def register(request: Request, mgmt: MgmtDep) -> Response:
    """A peer registers (setup key) or renews (peer id and credential).

    The reply holds its id, credential, map and a NATS user JWT for ``nats_key``.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise BadRequest(f"a registration is at most {_MAX_BODY // 1024} KiB")
    req = codec.decode(body, RegisterRequest)
    reply = await mgmt.registrar.register(req)
    return Response(codec.encode(reply), media_type="application/json")


def _revocations(mgmt: Any) -> BusRevocations:
    revocations: BusRevocations | None = mgmt.revocations
    if revocations is None:
        raise Unavailable("this policy has no --bus-keys: it cannot revoke bus keys")
    return revocations


@admin_router.post("/bus/revocations")
async def revoke(body: RevokeBody, mgmt: MgmtDep) -> dict[str, Any]:
    """Revoke a NATS user key: its live connections close, its JWTs are refused."""
    revocations = _revocations(mgmt)
    added = await revocations.revoke(body.public_key)
    entry = (await revocations.current()).get(body.public_key)
    return {
        "public_key": body.public_key,
        "revoked": True,
        "new": added,
        "at": entry.at if entry is not None else None,
        "until": entry.until if entry is not None else None,
    }


@admin_router.get("/bus/revocations")
async def list_revocations(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every revoked user key, with when (``at``) and until when it is kept (0: always)."""
    current = await _revocations(mgmt).current()
    return [{"public_key": k, "at": v.at, "until": v.until} for k, v in sorted(current.items())]
