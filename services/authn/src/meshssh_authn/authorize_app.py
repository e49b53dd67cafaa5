"""HTTP endpoints of the authorization code grant (browser sign-in with PKCE).

``/oauth2/authorize``: GET shows the sign-in page, POST checks the password and redirects
with a code. :func:`exchange_code` is what ``/oauth2/token`` does for
``grant_type=authorization_code``.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from meshssh_authn.auth_codes import AuthorizeError, AuthRequest
from meshssh_authn.authorize_page import SECURITY_HEADERS, authorize_page, error_page
from meshssh_authn.embedded_provider import EmbeddedProvider
from meshssh_common.errors import Denied, RateLimited

__all__ = ["exchange_code", "install_authorize_routes"]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX = 2048


def _html(text: str, status: int = 200, *, redirect_uri: str = "") -> HTMLResponse:
    headers = dict(SECURITY_HEADERS)
    if redirect_uri:  # browsers apply form-action to the redirect after the post too
        parts = urlsplit(redirect_uri)
        headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
            f"form-action 'self' {parts.scheme}://{parts.netloc}"
        )
    return HTMLResponse(text, status_code=status, headers=headers)


def _back(redirect_uri: str, **params: str) -> Response:
    sep = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(
        redirect_uri + sep + urlencode(params), status_code=303, headers=SECURITY_HEADERS
    )


def _refused(e: AuthorizeError, params: dict[str, str]) -> Response:
    if not e.redirect:
        return _html(error_page(e.description), 400)
    return _back(
        params["redirect_uri"],
        error=e.error,
        error_description=e.description,
        state=params.get("state", ""),
    )


def _token_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=_NO_STORE
    )


async def exchange_code(
    provider: EmbeddedProvider, *, code: str, client_id: str, redirect_uri: str, verifier: str
) -> JSONResponse:
    """The token endpoint's answer for ``grant_type=authorization_code`` (RFC 6749 §4.1.3)."""
    codes = provider.auth_codes
    if codes is None or not codes.enabled or client_id != codes.client_id:
        return _token_error("invalid_client", "unknown client_id", 401)
    grant = codes.redeem(code, client_id=client_id, redirect_uri=redirect_uri, verifier=verifier)
    if grant is None:
        return _token_error("invalid_grant", "the code is unknown, used, expired or not yours")
    issued = await provider.code_tokens(grant)
    if issued is None:
        return _token_error("invalid_grant", "the user no longer exists")
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


def install_authorize_routes(app: FastAPI, provider: EmbeddedProvider) -> None:
    """Add ``/oauth2/authorize`` to ``app`` (the token side is :func:`exchange_code`)."""

    def check(params: dict[str, str]) -> AuthRequest:
        if provider.auth_codes is None:
            raise AuthorizeError("unauthorized_client", "no browser client", redirect=False)
        return provider.auth_codes.check_request(params)

    @app.get("/oauth2/authorize")
    async def authorize(request: Request) -> Response:
        params = {k: v[:_MAX] for k, v in request.query_params.items()}
        try:
            checked = check(params)
        except AuthorizeError as e:
            return _refused(e, params)
        return _html(authorize_page(checked), redirect_uri=checked.redirect_uri)

    @app.post("/oauth2/authorize")
    async def authorize_submit(
        request: Request,
        username: Annotated[str, Form(max_length=256)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
    ) -> Response:
        form = await request.form()
        params = {k: str(v)[:_MAX] for k, v in form.items() if k not in ("username", "password")}
        try:
            checked = check(params)
        except AuthorizeError as e:
            return _refused(e, params)
        if not (username and password):
            error = "Enter your user name and your password."
            return _html(
                authorize_page(checked, username=username, error=error),
                400,
                redirect_uri=checked.redirect_uri,
            )
        address = request.client.host if request.client else ""
        try:
            await provider.check_password(username, password, address)
        except RateLimited as e:
            return _html(
                authorize_page(checked, error=str(e).capitalize() + "."),
                429,
                redirect_uri=checked.redirect_uri,
            )
        except Denied:
            error = "Wrong user name or password."
            return _html(
                authorize_page(checked, username=username, error=error),
                401,
                redirect_uri=checked.redirect_uri,
            )
        assert provider.auth_codes is not None
        code = provider.auth_codes.issue(checked, username=username)
        return _back(checked.redirect_uri, code=code, state=checked.state)
