"""Dashboard sign-in, and the checks every page and action makes.

Routes ``/auth/login``, ``/auth/callback`` and ``/auth/logout``; checks: signed in, admin
for writes, CSRF token on writes and on a user's own posts (a browser terminal).

A page without a session redirects to sign-in. A write without a session gets 401, a
non-admin's write 403, a write whose ``csrf`` form field or ``X-CSRF-Token`` header is not
the session's 403. Admins are the users in ``--admin-users``, the users of the meshssh
group ``--admin-group``, and users whose token's ``groups`` claim holds ``--admin-group``.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from meshssh_common.errors import Denied
from meshssh_common.jwt_validation import ValidatedToken
from meshssh_policy.management import Management
from meshssh_policy.web.oidc import OidcSignIn
from meshssh_policy.web.sessions import COOKIE, Session, SessionStore

__all__ = ["LOGIN_COOKIE", "WebAuth", "actor_of"]

LOGIN_COOKIE = "meshssh_login"


def actor_of(session: Session) -> str:
    """The audit actor of a dashboard session."""
    return f"user:{session.user}"


def _safe_next(path: str) -> str:
    # Only a local path: never an open redirect to another site.
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/peers"
    return path


class WebAuth:
    """Sessions, the OIDC relying party and the guards of pages and writes."""

    def __init__(self, mgmt: Management) -> None:
        self.mgmt = mgmt
        self.sessions = SessionStore(mgmt.settings.session_ttl)
        self.oidc = OidcSignIn(mgmt)

    def base_url(self, request: Request) -> str:
        """The dashboard's public URL (``--public-url``, else the one the request used)."""
        return self.mgmt.settings.public_url or str(request.base_url).rstrip("/")

    def secure(self, request: Request) -> bool:
        """True when the cookie must be Secure (the public URL is https)."""
        return self.base_url(request).startswith("https://")

    def is_admin(self, token: ValidatedToken) -> bool:
        """Whether the signed-in user may change things."""
        settings = self.mgmt.settings
        user = token.user_id
        if user in settings.admin_users:
            return True
        group = settings.admin_group
        if not group:
            return False
        record = self.mgmt.state.groups.get(group)
        if record is not None and user in record.users:
            return True
        claimed = token.claims.get("groups")
        return isinstance(claimed, list) and group in claimed

    def session(self, request: Request) -> Session | None:
        """The request's live session, if any."""
        return self.sessions.get(request.cookies.get(COOKIE, ""))

    async def writer(self, request: Request) -> Session:
        """The session of a write, after the admin and CSRF checks.

        Raises:
            HTTPException: 401 not signed in, 403 not an admin or a wrong CSRF token.
        """
        session = self.session(request)
        if session is None:
            raise HTTPException(401, "sign in first")
        if not session.admin:
            raise HTTPException(403, f"{session.user} may only read: not a dashboard admin")
        return await self._csrf(request, session)

    async def poster(self, request: Request) -> Session:
        """The session of a user's own request (a browser terminal): signed in, CSRF checked.

        Raises:
            HTTPException: 401 not signed in, 403 a wrong CSRF token.
        """
        session = self.session(request)
        if session is None:
            raise HTTPException(401, "sign in first")
        return await self._csrf(request, session)

    async def _csrf(self, request: Request, session: Session) -> Session:
        presented = request.headers.get("x-csrf-token", "")
        if not presented:
            form = await request.form()
            presented = str(form.get("csrf", ""))
        if not session.csrf_ok(presented):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return session

    def router(self) -> APIRouter:
        """The sign-in routes."""
        router = APIRouter(include_in_schema=False)

        @router.get("/auth/login")
        async def login(request: Request, next: str = "/peers") -> Response:
            redirect = self.base_url(request) + "/auth/callback"
            url, state = await self.oidc.start(redirect, next_path=_safe_next(next))
            response = RedirectResponse(url, status_code=303)
            # Binds the sign-in to this browser: a callback carrying someone else's code and
            # state (login CSRF) lacks the cookie and is refused.
            response.set_cookie(
                LOGIN_COOKIE,
                state,
                httponly=True,
                samesite="lax",
                secure=self.secure(request),
                max_age=600,
                path="/auth/callback",
            )
            return response

        @router.get("/auth/callback")
        async def callback(
            request: Request, state: str = "", code: str = "", error: str = ""
        ) -> Response:
            if error or not state or not code:
                raise HTTPException(400, f"sign-in failed: {error or 'no code'}")
            if not hmac.compare_digest(
                request.cookies.get(LOGIN_COOKIE, "").encode(), state.encode()
            ):
                raise HTTPException(403, "sign-in refused: it was not started in this browser")
            try:
                token, next_path, mesh_token = await self.oidc.finish(state[:256], code[:2048])
            except Denied as e:
                raise HTTPException(403, f"sign-in refused: {e.public}") from e
            admin = self.is_admin(token)
            name = str(token.claims.get("name") or token.claims.get("email") or "")
            sid, _ = self.sessions.create(
                user=token.user_id, admin=admin, name=name[:128], mesh_token=mesh_token
            )
            self.mgmt.log.info(
                "dashboard sign-in",
                extra={"user": token.user_id, "admin": admin, "mesh_token": bool(mesh_token)},
            )
            response = RedirectResponse(_safe_next(next_path), status_code=303)
            response.delete_cookie(LOGIN_COOKIE, path="/auth/callback")
            response.set_cookie(
                COOKIE,
                sid,
                httponly=True,
                samesite="lax",
                secure=self.secure(request),
                max_age=int(self.mgmt.settings.session_ttl),
                path="/",
            )
            return response

        @router.post("/auth/logout")
        async def logout(request: Request) -> Response:
            session = self.session(request)
            if session is not None:
                form = await request.form()
                presented = request.headers.get("x-csrf-token", "") or str(form.get("csrf", ""))
                if not session.csrf_ok(presented):
                    raise HTTPException(403, "missing or wrong CSRF token: reload the page")
                self.sessions.drop(request.cookies.get(COOKIE, ""))
            response = RedirectResponse("/signed-out", status_code=303)
            response.delete_cookie(
                COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure(request)
            )
            return response

        return router


def login_redirect(request: Request) -> Response:
    """Where a page without a session sends the browser."""
    target = urlsplit(str(request.url))
    path = target.path + (f"?{target.query}" if target.query else "")
    return RedirectResponse(f"/auth/login?next={_quote(path)}", status_code=303)


def _quote(path: str) -> str:
    return quote(path, safe="/")
