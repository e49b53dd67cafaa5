"""The dashboard's pages (GET).

Peers, a peer, Users, Groups, Policies, Setup keys, Audit and the live strip. Every page
needs a sign-in; read-only users see the same pages with the write controls disabled.
(Recordings, for admins only, are in ``recording_pages.py``; a peer's live sessions and the
audit log link to the ones that exist.) With
``--gateway-url``, Peers and a peer's page show a Connect form (a browser terminal) on each
peer the signed-in user's rules let them log in to (:mod:`meshssh_policy.web.terminal`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlencode

import nats.errors
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from meshssh_common.recording_stream import recorded_sessions
from meshssh_common.wire import AuditKind
from meshssh_policy.api_audit import peer_filter
from meshssh_policy.api_resources import user_view
from meshssh_policy.audit_log import AuditQuery, event_view, read_audit
from meshssh_policy.management import Management
from meshssh_policy.peers import setup_key_view
from meshssh_policy.terminal_access import Access, terminal_access
from meshssh_policy.web.auth import WebAuth, login_redirect
from meshssh_policy.web.policy_form import PolicyForm
from meshssh_policy.web.sessions import Session
from meshssh_policy.web.views import (
    ago,
    host_key_fingerprint,
    live_counts,
    peer_row,
    policy_rows,
    rules_of_map,
)

__all__ = ["SECURITY_HEADERS", "Pages"]

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _expires(at: float) -> str:
    if not at:
        return "never"
    left = at - time.time()
    return "expired" if left <= 0 else f"in {int(left // 86400)} d {int(left % 86400 // 3600)} h"


class Pages:
    """Renders the dashboard's templates for a session."""

    def __init__(self, mgmt: Management, auth: WebAuth) -> None:
        self.mgmt = mgmt
        self.auth = auth
        self.templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
        env = self.templates.env
        env.globals.update(ago=ago, when=_when, expires=_expires)

    def render(
        self, request: Request, session: Session | None, name: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        """A page for ``session`` (the live strip included)."""
        context = {"session": session, "live": live_counts(self.mgmt), **values}
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def terminals(self, session: Session, peer_ids: list[str]) -> dict[str, Access] | None:
        """Which of ``peer_ids`` the user may open a browser terminal to (None: terminals off)."""
        if not self.mgmt.settings.gateway_url:
            return None
        compiler = self.mgmt.compiler()
        return {p: terminal_access(self.mgmt, p, session.user, compiler) for p in peer_ids}

    def peer_names(self) -> dict[str, str]:
        """Peer id -> name."""
        return {p.id: p.name for p in self.mgmt.state.peers.values()}

    async def recorded(self, session: Session) -> set[str]:
        """The session ids with a recording, for links to the player (admins only).

        A stream that does not answer means no links (logged).
        """
        if not session.admin:
            return set()
        try:
            return await recorded_sessions(self.mgmt.js)
        except (nats.errors.Error, TimeoutError) as e:
            self.mgmt.log.warning("recordings stream did not answer", extra={"error": repr(e)})
            return set()

    def groups_page(
        self, request: Request, session: Session, error: str = "", status: int = 200
    ) -> HTMLResponse:
        """The Groups page (also after a refused change, with ``error``)."""
        state = self.mgmt.state
        peers = sorted(state.peers.values(), key=lambda p: p.name)
        return self.render(
            request,
            session,
            "groups.html",
            status,
            groups=[state.groups[g] for g in sorted(state.groups)],
            peer_names=self.peer_names(),
            user_choices=[(u, u) for u in sorted(state.users)],
            peer_choices=[(p.id, p.name) for p in peers],
            error=error,
        )

    def policy_form_page(
        self,
        request: Request,
        session: Session,
        form: PolicyForm,
        *,
        policy_id: str = "",
        errors: dict[str, str] | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        """The policy form, with its errors inline."""
        errors = errors or {}
        return self.render(
            request,
            session,
            "policy_form.html",
            status,
            form=form.with_blank_rule(),
            policy_id=policy_id,
            field_errors=errors,
            errors=list(errors.values()),
        )

    def keys_page(
        self,
        request: Request,
        session: Session,
        *,
        created: Any = None,
        error: str = "",
        status: int = 200,
    ) -> HTMLResponse:
        """The Setup keys page (with a new key shown once)."""
        now = time.time()
        keys = sorted(self.mgmt.state.setup_keys.values(), key=lambda k: (k.name, k.id))
        return self.render(
            request,
            session,
            "setup_keys.html",
            status,
            keys=[setup_key_view(k, now) for k in keys],
            created=created,
            error=error,
            group_ids=sorted(self.mgmt.state.groups),
        )

    def router(self) -> APIRouter:
        """The GET routes."""
        router = APIRouter(include_in_schema=False)
        mgmt, auth = self.mgmt, self.auth

        @router.get("/")
        async def home() -> Response:
            return RedirectResponse("/peers", status_code=303)

        @router.get("/peers")
        async def peers(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            ids = sorted(mgmt.state.peers, key=lambda p: (mgmt.state.peers[p].name, p))
            return self.render(
                request,
                session,
                "peers.html",
                peers=[peer_row(mgmt, p) for p in ids],
                terminals=self.terminals(session, ids),
            )

        @router.get("/peers/{peer_id}")
        async def peer(request: Request, peer_id: str) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            if peer_id not in mgmt.state.peers:
                raise HTTPException(404, f"peer {peer_id[:80]!r} does not exist")
            netmap = await mgmt.engine.publisher.current(peer_id)
            row = peer_row(mgmt, peer_id)
            return self.render(
                request,
                session,
                "peer.html",
                p=row,
                rules=rules_of_map(netmap),
                published_serial=netmap.serial if netmap is not None else None,
                fingerprint=host_key_fingerprint(row["ssh_host_key"]),
                recorded=await self.recorded(session),
                terminals=self.terminals(session, [peer_id]),
            )

        @router.get("/users")
        async def users(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            rows = [user_view(mgmt, u) for u in sorted(mgmt.state.users)]
            return self.render(request, session, "users.html", users=rows)

        @router.get("/groups")
        async def groups(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            return self.groups_page(request, session)

        @router.get("/policies")
        async def policies(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            return self.render(request, session, "policies.html", policies=policy_rows(mgmt))

        @router.get("/policies/new")
        async def new_policy(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            return self.policy_form_page(request, session, PolicyForm())

        @router.get("/policies/{policy_id}")
        async def edit_policy(request: Request, policy_id: str) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            record = mgmt.state.policies.get(policy_id)
            if record is None:
                raise HTTPException(404, f"policy {policy_id[:80]!r} does not exist")
            return self.policy_form_page(
                request, session, PolicyForm.from_record(record), policy_id=policy_id
            )

        @router.get("/setup-keys")
        async def setup_keys(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            return self.keys_page(request, session)

        @router.get("/audit")
        async def audit(
            request: Request, user: str = "", peer: str = "", kind: str = "", before: int = 0
        ) -> Response:
            if (session := auth.session(request)) is None:
                return login_redirect(request)
            user, peer, kind = user[:255], peer[:255], kind[:64]
            query = AuditQuery(
                user=user, peer=peer_filter(mgmt, peer), kind=kind, before=max(0, before), limit=50
            )
            page = await read_audit(mgmt.js, query)
            older = urlencode(
                {"user": user, "peer": peer, "kind": kind, "before": page.next_before}
            )
            return self.render(
                request,
                session,
                "audit.html",
                events=[event_view(seq, e) for seq, e in page.events],
                q={"user": user, "peer": peer, "kind": kind},
                kinds=get_args(AuditKind),
                next_before=page.next_before,
                older=older,
                peer_names=self.peer_names(),
                recorded=await self.recorded(session),
            )

        @router.get("/live")
        async def live(request: Request) -> Response:
            if (session := auth.session(request)) is None:
                raise HTTPException(401, "sign in first")
            return self.render(request, session, "live.html")

        @router.get("/signed-out")
        async def signed_out(request: Request) -> Response:
            return self.render(
                request,
                None,
                "message.html",
                title="Signed out",
                text="You are signed out.",
                link="/auth/login?next=/peers",
                link_text="Sign in again",
            )

        return router
