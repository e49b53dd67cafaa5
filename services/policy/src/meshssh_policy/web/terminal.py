"""Browser terminals: the Connect form's post and the terminal page (issue 20).

``POST /ui/peers/{peer_id}/terminal`` (signed in, CSRF token; any user, not only admins: it
is a login of one's own) decides with :mod:`meshssh_policy.terminal_access` whether the user
may log in to the peer as the chosen local user. Refused: a page that says why (403), no
ticket. Allowed: a one-time ticket (:mod:`meshssh_policy.gateway_tickets`) carrying the user's
IdP token from the sign-in, then ``303`` to ``GET /ui/terminal?ticket=...``, the page whose
xterm.js (vendored in ``static/``) opens ``<--gateway-url>/v1/terminal?ticket=...`` as a
WebSocket. The page shows the ticket's peer and local user only to the session that asked for
it; a used or expired ticket gets a "connect again" page.

A session whose sign-in gave no token the mesh accepts, or one too old for the mesh's maximum
token age, is sent to sign in again first.

Example::

    app.include_router(Terminals(mgmt, auth, pages).router())
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from meshssh_policy.management import Management
from meshssh_policy.terminal_access import terminal_access
from meshssh_policy.web.auth import WebAuth, login_redirect
from meshssh_policy.web.pages import SECURITY_HEADERS, Pages
from meshssh_policy.web.sessions import COOKIE, Session, session_hash

__all__ = ["Terminals", "terminal_url"]

_TOKEN_MARGIN = 20.0  # seconds the IdP token must still be good for when a ticket is issued


def terminal_url(gateway_url: str, ticket: str) -> str:
    """The WebSocket URL of a terminal: ``ws(s)://<gateway>/v1/terminal?ticket=...``."""
    base = gateway_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/v1/terminal?{urlencode({'ticket': ticket})}"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Terminals:
    """The browser terminal routes."""

    def __init__(self, mgmt: Management, auth: WebAuth, pages: Pages) -> None:
        self.mgmt = mgmt
        self.auth = auth
        self.pages = pages

    def refusal(
        self, request: Request, session: Session, text: str, *, link: str = "", link_text: str = ""
    ) -> HTMLResponse:
        """The page of a refused terminal (403)."""
        return self.pages.render(
            request,
            session,
            "message.html",
            403,
            title="No terminal",
            text=text,
            error=True,
            link=link,
            link_text=link_text,
        )

    def router(self) -> APIRouter:
        """``POST /ui/peers/{peer_id}/terminal`` and ``GET /ui/terminal``."""
        router = APIRouter(include_in_schema=False)
        mgmt, auth = self.mgmt, self.auth

        @router.post("/ui/peers/{peer_id}/terminal")
        async def open_terminal(request: Request, peer_id: str) -> Response:
            session = await auth.poster(request)
            local_user = str((await request.form()).get("local_user", "")).strip()[:64]
            access = terminal_access(mgmt, peer_id, session.user)
            why = access.login_refusal(local_user)
            if why:
                mgmt.metrics.terminal_tickets.labels(result="refused").inc()
                mgmt.log.info(
                    "terminal refused",
                    extra={"user": session.user, "peer": peer_id[:80], "reason": why},
                )
                return self.refusal(
                    request, session, why, link=f"/peers/{quote(peer_id)}", link_text="Back"
                )
            token = session.mesh_token
            if token is None or token.usable_until - time.time() < _TOKEN_MARGIN:
                mgmt.metrics.terminal_tickets.labels(result="sign_in_again").inc()
                text = (
                    "Your sign-in is too old for a terminal (the mesh accepts tokens for "
                    "a limited time): sign in again, then connect."
                    if token is not None
                    else "Your sign-in gave no token the mesh accepts (its audience or "
                    "issuer differ from meshssh-authn's), so terminals cannot open: ask an "
                    "administrator."
                )
                next_path = quote(f"/peers/{peer_id}", safe="/")
                return self.refusal(
                    request,
                    session,
                    text,
                    link=f"/auth/login?next={next_path}" if token is not None else "",
                    link_text="Sign in again",
                )
            ticket = await mgmt.tickets.issue(
                sub=session.user,
                email=token.email,
                name=session.name,
                idp_token=token.token,
                peer_id=access.peer_id,
                local_user=local_user,
                browser_addr=request.client.host if request.client else "",
                session_hash=session_hash(request.cookies.get(COOKIE, "")),
            )
            return RedirectResponse(
                f"/ui/terminal?{urlencode({'ticket': ticket})}", status_code=303
            )

        @router.get("/ui/terminal")
        async def terminal_page(request: Request, ticket: str = "") -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            gateway = mgmt.settings.gateway_url
            if not gateway:
                raise HTTPException(404, "browser terminals are off (policy has no --gateway-url)")
            record = await mgmt.tickets.peek(ticket, session_hash(request.cookies.get(COOKIE, "")))
            if record is None:
                return self.pages.render(
                    request,
                    session,
                    "message.html",
                    410,
                    title="Terminal link used up",
                    text="This terminal link expired or was already used: connect again "
                    "from the peer's page.",
                    error=True,
                    link="/peers",
                    link_text="Peers",
                )
            peer = mgmt.state.peers.get(record.peer_id)
            values: dict[str, Any] = {
                "ws_url": terminal_url(gateway, ticket),
                "peer_id": record.peer_id,
                "peer_name": peer.name if peer is not None else record.peer_id,
                "local_user": record.local_user,
            }
            response = self.pages.templates.TemplateResponse(
                request, "terminal.html", {"session": session, **values}
            )
            response.headers.update(SECURITY_HEADERS)
            # xterm.js styles its rows from a <style> element it makes; the WebSocket goes to
            # the gateway's origin. Scripts stay 'self' only.
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                f"img-src 'self' data:; connect-src 'self' {_origin(values['ws_url'])}; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            )
            return response

        return router
