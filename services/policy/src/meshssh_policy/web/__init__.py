"""The web dashboard at ``/``: operators sign in with the identity provider.

Pages: Peers (the SSH switch), a peer's detail (end live sessions), Users, Groups, Policies,
Setup keys, the Audit log and, for admins, Recordings with a player; a live strip on each. With
``--gateway-url``, a terminal in the browser to each peer the user may log in to
(:mod:`meshssh_policy.web.terminal`). Server-rendered Jinja2 templates; htmx (vendored in
``static/``, version in its file name, licence beside it) only polls the live strip: links and
forms are plain HTML (post, then redirect), so every page works without JavaScript but the
recording player (asciinema-player) and the terminal (xterm.js), vendored the same way.

Example::

    install_dashboard(app, mgmt)
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from meshssh_policy.management import Management
from meshssh_policy.web.actions import Actions
from meshssh_policy.web.auth import WebAuth
from meshssh_policy.web.pages import Pages
from meshssh_policy.web.recording_pages import RecordingPages
from meshssh_policy.web.terminal import Terminals

__all__ = ["install_dashboard"]


def install_dashboard(app: FastAPI, mgmt: Management) -> WebAuth:
    """Add the dashboard's routes and static files to ``app``; returns its sign-in state."""
    auth = WebAuth(mgmt)
    pages = Pages(mgmt, auth)
    app.include_router(auth.router())
    app.include_router(pages.router())
    app.include_router(RecordingPages(mgmt, auth, pages).router())
    app.include_router(Actions(mgmt, auth, pages).router())
    app.include_router(Terminals(mgmt, auth, pages).router())
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return auth
