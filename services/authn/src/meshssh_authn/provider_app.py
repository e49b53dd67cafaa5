"""HTTP endpoints of the embedded OIDC provider (FastAPI), thin over :class:`EmbeddedProvider`.

OAuth errors follow RFC 6749 §5.2 / RFC 8628 §3.5: a JSON body ``{"error": ...}`` with 400
(401 for ``invalid_client``), and ``Cache-Control: no-store`` on every token response.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from meshssh_authn.authorize_app import exchange_code, install_authorize_routes
from meshssh_authn.device_grants import PollStatus
from meshssh_authn.embedded_provider import DEVICE_GRANT, EmbeddedProvider
from meshssh_authn.login_page import SECURITY_HEADERS, code_page, done_page, login_page
from meshssh_common.errors import BadRequest, Denied, NotFound, RateLimited, Unavailable

__all__ = ["install_routes"]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_POLL_ERRORS: dict[PollStatus, str] = {
    "pending": "authorization_pending",
    "slow_down": "slow_down",
    "denied": "access_denied",
    "expired": "expired_token",
}
_MAX_FIELD = 4096


def _oauth_error(error: str, description: str = "", status: int = 400) -> JSONResponse:
    body = {"error": error}
    if description:
        body["error_description"] = description
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = "Basic"
    return JSONResponse(body, status_code=status, headers=headers)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def install_routes(app: FastAPI, provider: EmbeddedProvider) -> None:
    """Add the provider's routes to ``app``."""

    async def unavailable(request: Request, exc: Exception) -> Response:
        # KV (grants, keys) unreachable: say so, retryably, instead of a bare 500.
        return _oauth_error("temporarily_unavailable", "try again shortly", 503)

    app.add_exception_handler(Unavailable, unavailable)
    install_authorize_routes(app, provider)

    @app.get("/.well-known/openid-configuration")
    async def discovery() -> JSONResponse:
        return JSONResponse(provider.metadata(), headers={"Cache-Control": "max-age=300"})

    @app.get("/.well-known/jwks.json")
    @app.get("/jwks")
    async def jwks() -> JSONResponse:
        max_age = provider.config.jwks_max_age
        return JSONResponse(
            {"keys": list(provider.ring.public_jwks())},
            headers={"Cache-Control": f"public, max-age={max_age}"},
        )

    @app.post("/oauth2/device_authorization")
    async def device_authorization(
        client_id: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        scope: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
    ) -> JSONResponse:
        try:
            started = await provider.authorize_device(client_id, scope)
        except BadRequest:
            return _oauth_error("invalid_client", "unknown client_id", 401)
        verify = provider.url("/device")
        return JSONResponse(
            {
                "device_code": started.device_code,
                "user_code": started.user_code,
                "verification_uri": verify,
                "verification_uri_complete": f"{verify}?user_code={started.user_code}",
                "expires_in": started.expires_in,
                "interval": started.interval,
            },
            headers=_NO_STORE,
        )

    @app.post("/oauth2/token")
    async def token(
        grant_type: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        device_code: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        client_id: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        code: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        redirect_uri: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
        code_verifier: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
    ) -> JSONResponse:
        if grant_type == "authorization_code":
            return await exchange_code(
                provider,
                code=code,
                client_id=client_id,
                redirect_uri=redirect_uri,
                verifier=code_verifier,
            )
        if grant_type != DEVICE_GRANT:
            return _oauth_error("unsupported_grant_type", "only the device code grant")
        if not device_code:
            return _oauth_error("invalid_request", "device_code is required")
        try:
            status, issued = await provider.poll_token(device_code, client_id)
        except BadRequest:
            return _oauth_error("invalid_client", "unknown client_id", 401)
        if status != "ok" or issued is None:
            return _oauth_error(_POLL_ERRORS[status] if status != "ok" else "server_error")
        return JSONResponse(
            {
                "access_token": issued.access_token,
                "id_token": issued.id_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "scope": issued.scope,
            },
            headers=_NO_STORE,
        )

    @app.get("/")
    async def root() -> Response:
        return RedirectResponse(provider.url("/device"), status_code=303)

    def _address(request: Request) -> str:
        return request.client.host if request.client else ""

    async def _confirm_page(
        request: Request, user_code: str, *, username: str = "", error: str = "", status: int = 200
    ) -> HTMLResponse:
        """The confirm step for ``user_code``, or the code page with why it cannot be shown."""
        try:
            grant = await provider.lookup_code(user_code, _address(request))
        except RateLimited as e:
            return _html(code_page(error=str(e).capitalize() + "."), 429)
        except NotFound:
            error = "That code is unknown, expired or already used. Start again in your terminal."
            return _html(code_page(error=error), 400)
        page = login_page(
            user_code=user_code,
            context=grant.context,
            created_at=grant.created_at,
            username=username,
            error=error,
        )
        return _html(page, status)

    @app.get("/device")
    async def device_page(request: Request, user_code: str = "") -> HTMLResponse:
        if not user_code:
            return _html(code_page())
        return await _confirm_page(request, user_code[:64])

    @app.post("/device")
    async def device_submit(
        request: Request,
        user_code: Annotated[str, Form(max_length=64)] = "",
        username: Annotated[str, Form(max_length=256)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        action: Annotated[str, Form(max_length=16)] = "approve",
        confirm: Annotated[str, Form(max_length=16)] = "",
    ) -> HTMLResponse:
        if not user_code:
            return _html(code_page(error="Enter the code your terminal shows."), 400)
        approve = action != "deny"
        if not (username and password):
            error = "Enter your user name and your password."
            return await _confirm_page(
                request, user_code, username=username, error=error, status=400
            )
        if approve and confirm != "yes":
            error = "Check the server, user and source above, then tick the box to approve."
            return await _confirm_page(
                request, user_code, username=username, error=error, status=400
            )
        try:
            outcome = await provider.login(
                user_code=user_code,
                username=username,
                password=password,
                address=_address(request),
                approve=approve,
            )
        except NotFound:
            error = "That code is unknown, expired or already used. Start again in your terminal."
            return _html(code_page(error=error), 400)
        except RateLimited as e:
            return _html(code_page(error=str(e).capitalize() + "."), 429)
        except Denied:
            error = "Wrong user name or password."
            return await _confirm_page(
                request, user_code, username=username, error=error, status=401
            )
        return _html(done_page(approved=outcome == "approved", username=username))
