"""``meshssh login``: sign in with the OIDC device flow and get the token SSH servers accept.

The provider comes from the management plane (``--management-url``, which serves
``/api/v1/auth/config``) or directly from ``--issuer`` and ``--client-id``. The URL and code
go to stderr, each on its own line starting ``URL: `` and ``Code: `` (SPEC §11); a browser
opens unless ``--no-browser`` or there is no graphical session.

When a peer agent (``meshssh up``) serves ``--state-dir`` (default: the agent's default), the
login goes through it: the agent runs (or joins) this OS user's device flow, sends the URL and
code, and keeps the token in its per-user cache for its own ``--ssh-jwt-cache-ttl``, where
``meshssh ssh`` and the OpenSSH drop-in find it. Only when no agent runs there (or with
``--issuer``) does the flow run in this process, with a :class:`TokenCache` of its own:
``--ssh-jwt-cache-ttl`` then only bounds the token this command hands out. ``--print-token``
writes the token to stdout for scripts.

Exit codes: 0 signed in; 1 refused, expired or unreachable; 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

import httpx

from meshssh_agent.state_dir import default_state_dir
from meshssh_agent.tokens import Notify, TokenCache, token_times
from meshssh_cli.link.client import AgentClient, NotRunning
from meshssh_cli.link.opener import LOGIN_TIMEOUT, PromptPrinter, graphical
from meshssh_common.errors import MeshError
from meshssh_common.oidc_device import (
    DeviceAuthorization,
    DeviceFlowClient,
    discover_client_config,
    fetch_client_config,
)
from meshssh_common.wire import OidcClientConfig

__all__ = ["register", "run_login"]


def register(subparsers: Any) -> None:
    """Add the ``login`` subcommand to ``meshssh``'s subparsers."""
    p = subparsers.add_parser(
        "login",
        help="sign in with your identity provider (OIDC device flow)",
        description="Sign in with the OIDC device flow; prints the URL and code on stderr.",
    )
    p.add_argument(
        "--management-url",
        default=os.environ.get("MESHSSH_MANAGEMENT_URL", ""),
        help="management API URL; names the provider [env MESHSSH_MANAGEMENT_URL]",
    )
    p.add_argument("--issuer", default="", help="log in to this OIDC issuer directly instead")
    p.add_argument("--client-id", default="meshssh", help="OIDC client id with --issuer")
    p.add_argument(
        "--scope", action="append", default=None, help="scope with --issuer (repeatable)"
    )
    p.add_argument(
        "--use-id-token", action="store_true", help="with --issuer: present the ID token"
    )
    p.add_argument(
        "--no-browser",
        action="store_true",
        default=bool(os.environ.get("MESHSSH_NO_BROWSER")),
        help="do not open a browser [env MESHSSH_NO_BROWSER]",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("MESHSSH_STATE_DIR") or None,
        help="the peer agent's state dir; its agent runs the login and caches the token "
        "[env MESHSSH_STATE_DIR]",
    )
    p.add_argument(
        "--ssh-jwt-cache-ttl",
        type=int,
        default=0,
        metavar="SECONDS",
        help="without an agent: hand out the token only this long (0: no bound)",
    )
    p.add_argument("--print-token", action="store_true", help="write the token to stdout")
    p.add_argument("--timeout", type=float, default=15.0, help="HTTP timeout in seconds")
    p.set_defaults(run=run_login)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _show(auth: DeviceAuthorization) -> None:
    _say("To sign in, open this URL in a browser and enter the code:")
    _say(f"URL: {auth.verification_uri}")
    _say(f"Code: {auth.user_code}")


async def _client_config(http: httpx.AsyncClient, args: argparse.Namespace) -> OidcClientConfig:
    if args.issuer:
        scopes = tuple(args.scope or ("openid", "email", "profile"))
        return await discover_client_config(
            http, args.issuer, args.client_id, scopes=scopes, use_id_token=args.use_id_token
        )
    return await fetch_client_config(http, args.management_url)


async def _login(args: argparse.Namespace) -> str:
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout)) as http:
        config = await _client_config(http, args)
        flow = DeviceFlowClient(config, http)

        async def device_flow(uid: int, notify: Notify) -> str:
            auth = await flow.start()
            notify(auth)  # every waiting caller shows the URL and code
            if not args.no_browser and graphical():  # one browser per flow
                target = auth.verification_uri_complete or auth.verification_uri
                await asyncio.to_thread(webbrowser.open, target)
            return (await flow.wait(auth)).token

        cache = TokenCache(
            device_flow,
            ttl=args.ssh_jwt_cache_ttl,
            max_token_age=config.max_token_age,
            clock_skew=config.clock_skew,
        )
        try:
            return await cache.get(os.getuid(), on_prompt=_show)
        finally:
            await cache.aclose()


async def _agent_login(args: argparse.Namespace) -> str | None:
    """The token through the agent of ``--state-dir``; None when no agent runs there."""
    state_dir = args.state_dir or default_state_dir()
    printer = PromptPrinter(open_browser=not args.no_browser and graphical())
    try:
        async with AgentClient.connect(state_dir) as agent:
            reply = await agent.token_get(login=True, on_prompt=printer, timeout=LOGIN_TIMEOUT)
    except NotRunning:
        return None
    if not reply.token:
        raise MeshError("the agent returned no token")
    if reply.cached and not printer.shown:
        _say("Already signed in (token cached by the agent).")
    return reply.token


async def _login_anywhere(args: argparse.Namespace) -> str:
    if not args.issuer:
        token = await _agent_login(args)
        if token is not None:
            return token
        if not args.management_url:
            raise _Usage("no agent runs there: give --management-url (or --issuer and --client-id)")
    return await _login(args)


class _Usage(Exception):
    """A usage error found after parsing (exit 2)."""


def _describe(token: str) -> str:
    _, exp = token_times(token)
    if exp is None:
        return "Signed in."
    left = int(exp - time.time())
    return f"Signed in; the token is valid for {max(0, left)} s."


def run_login(args: argparse.Namespace) -> int:
    """Run ``meshssh login`` with parsed ``args``; returns the exit code."""
    if args.ssh_jwt_cache_ttl < 0:
        _say("meshssh login: --ssh-jwt-cache-ttl must be 0 or more")
        return 2
    try:
        token = asyncio.run(_login_anywhere(args))
    except _Usage as e:
        _say(f"meshssh login: {e}")
        return 2
    except MeshError as e:
        _say(f"meshssh login: {e.public}")
        return 1
    except KeyboardInterrupt:
        _say("meshssh login: interrupted")
        return 1
    _say(_describe(token))
    if args.print_token:
        sys.stdout.write(token + "\n")
        sys.stdout.flush()
    return 0
