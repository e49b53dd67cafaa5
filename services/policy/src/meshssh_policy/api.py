"""The REST API (``/api/v1``, OpenAPI at ``/docs``) and the dashboard at ``/`` (SPEC §4, §9).

Every call needs ``Authorization: Bearer <admin token>`` except the public
``GET /api/v1/ssh/known_hosts``, ``GET /api/v1/auth/config`` and
``POST /api/v1/peers/register`` (the setup key or peer credential in its body authenticates
it; :mod:`meshssh_policy.api_bus`). The dashboard
(:mod:`meshssh_policy.web`) signs its users in with the identity provider instead. Every
write is audited (:mod:`meshssh_policy.admin_audit`). Errors are JSON
``{"error": "<one line>"}``: 422 names the invalid field (``rules[0].protocol: ...``), 400 an
invalid reference, 401 a missing or wrong token, 404 an unknown id, 409 a conflict, 503 a
dependency that is not there yet.

Example::

    app = create_app(mgmt)
    HttpServer(app, settings.listen)
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from meshssh_common.errors import MeshError
from meshssh_common.version import VERSION
from meshssh_policy.admin_audit import AuditWrites, token_actor
from meshssh_policy.api_audit import router as audit_router
from meshssh_policy.api_bus import admin_router as bus_router
from meshssh_policy.api_bus import public_router as register_router
from meshssh_policy.api_deps import MgmtDep
from meshssh_policy.api_peers import router as peers_router
from meshssh_policy.api_recordings import router as recordings_router
from meshssh_policy.api_resources import router as resources_router
from meshssh_policy.http_errors import http_status
from meshssh_policy.management import Management
from meshssh_policy.validation import validation_message
from meshssh_policy.web import install_dashboard

__all__ = ["admin_only", "create_app", "known_hosts", "validation_message"]


class _Unauthorized(Exception):
    """Raised by the auth dependencies; turned into 401."""

    def __init__(self) -> None:
        super().__init__("missing or wrong admin token")


def _token_ok(mgmt: Management, presented: str) -> bool:
    return hmac.compare_digest(presented.encode(), mgmt.admin_token.encode())


def admin_only(request: Request, mgmt: MgmtDep) -> None:
    """Dependency: the request carries the admin bearer token (the actor of its audit)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not _token_ok(mgmt, value.strip()):
        raise _Unauthorized()
    request.state.actor = token_actor(value.strip())


def known_hosts(mgmt: Management) -> str:
    """Every peer's host key as known_hosts lines: port 22 (relay) and 22022 (sshd)."""
    lines = []
    for peer in sorted(mgmt.state.peers.values(), key=lambda p: p.name):
        if peer.ssh_host_key:
            ip = peer.mesh_ip
            lines.append(f"{peer.name},{ip} {peer.ssh_host_key}")
            lines.append(f"[{peer.name}]:22022,[{ip}]:22022 {peer.ssh_host_key}")
    return "".join(f"{line}\n" for line in lines)


def create_app(mgmt: Management) -> FastAPI:
    """The FastAPI app of one replica."""
    app = FastAPI(
        title="meshssh management API",
        version=VERSION,
        description="Peers, users, groups, policies and setup keys of a meshssh mesh.",
    )
    app.state.mgmt = mgmt

    @app.exception_handler(MeshError)
    async def mesh_error(_: Request, exc: MeshError) -> JSONResponse:
        status = http_status(exc)
        return JSONResponse({"error": exc.public, "code": exc.code}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(
            {"error": validation_message(errors), "code": "invalid", "errors": errors},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.headers.get("hx-request"):
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
        return PlainTextResponse(
            f"{exc.status_code}: {exc.detail}\n",
            status_code=exc.status_code,
            headers={"Cache-Control": "no-store"},
        )

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_: Request, exc: _Unauthorized) -> JSONResponse:
        challenge = 'Bearer realm="meshssh"'
        return JSONResponse(
            {"error": "missing or wrong admin token", "code": "unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": challenge},
        )

    admin = [Depends(admin_only)]
    app.include_router(register_router)  # before /peers/{peer_id}: no token, body authenticates
    app.include_router(peers_router, dependencies=admin)
    app.include_router(bus_router, dependencies=admin)
    app.include_router(resources_router, dependencies=admin)
    app.include_router(audit_router, dependencies=admin)
    app.include_router(recordings_router, dependencies=admin)
    app.add_middleware(AuditWrites, audit=mgmt.audit)

    @app.get("/api/v1/ssh/known_hosts", response_class=PlainTextResponse, tags=["public"])
    async def ssh_known_hosts(mgmt: MgmtDep) -> PlainTextResponse:
        """The peers' SSH host keys in known_hosts format (public)."""
        return PlainTextResponse(known_hosts(mgmt))

    @app.get("/api/v1/auth/config", tags=["public"])
    async def auth_config(mgmt: MgmtDep) -> JSONResponse:
        """What ``meshssh login`` needs: the OIDC client and the token rules (public)."""
        snapshot = mgmt.state.jwks
        if snapshot is None:
            return JSONResponse(
                {
                    "error": "authentication is not configured yet: meshssh-authn has not "
                    "published its settings to NATS (is meshssh-authn running?)",
                    "code": "unavailable",
                },
                status_code=503,
            )
        if snapshot.client is None:
            return JSONResponse(
                {
                    "error": "the identity provider has no client configured for meshssh login "
                    "(configure a client in meshssh-authn)",
                    "code": "unavailable",
                },
                status_code=503,
            )
        client = snapshot.client
        body: dict[str, Any] = {
            f: msgspec.to_builtins(getattr(client, f)) for f in client.__struct_fields__
        }
        jwt = snapshot.jwt
        # The servers validate with the JWT config: its limits are the ones that count.
        body.update(
            token_issuer=jwt.issuer,
            audiences=list(jwt.audiences),
            user_id_claim=jwt.user_id_claim,
            max_token_age=jwt.max_token_age,
            clock_skew=jwt.clock_skew,
        )
        return JSONResponse(body)

    app.state.web = install_dashboard(app, mgmt)
    return app
