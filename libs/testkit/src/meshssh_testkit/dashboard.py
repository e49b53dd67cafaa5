"""Helpers for dashboard tests: users for the embedded provider, and a sign-in over plain HTTP.

:func:`sign_in` walks the real OIDC authorization code flow as a browser does: the dashboard
redirects to the provider's sign-in page, the form posts the password, the provider
redirects back with a code, the dashboard sets its session cookie. It returns an HTTP client
that holds the cookie and the CSRF token read from the page.

Example::

    await add_user(users_file, "alice", "pw-alice-0123", groups=("users",))
    client, csrf = await sign_in(policy_url, "alice", "pw-alice-0123")
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import ServiceProcess, script

__all__ = ["add_user", "csrf_of", "sign_in", "start_dashboard_authn"]

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def add_user(
    users_file: Path, name: str, password: str, *, email: str = "", groups: tuple[str, ...] = ()
) -> None:
    """``meshssh-authn users add`` (the real command, password on stdin)."""
    args = ["users", "add", name, "--password-stdin", "--users-file", str(users_file)]
    if email:
        args += ["--email", email]
    for group in groups:
        args += ["--group", group]
    proc = await asyncio.create_subprocess_exec(
        script("meshssh-authn"),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate(password.encode() + b"\n")
    if proc.returncode != 0:
        raise RuntimeError(f"users add {name} failed: {err.decode()}")


async def start_dashboard_authn(
    services: ServiceFactory,
    bus: NatsServer | NatsCluster,
    users: Path,
    site: str,
    *flags: str,
) -> ServiceProcess:
    """meshssh-authn's embedded provider (OS-picked port) serving the users of ``users``.

    It sends a dashboard sign-in back to ``<site>/auth/callback``; ``flags`` are added.
    """
    return await services.start(
        "meshssh-authn",
        *bus.authn_flags(),
        *("--listen", "127.0.0.1:0", "--users-file", str(users)),
        *("--dashboard-redirect-uri", f"{site}/auth/callback"),
        *flags,
    )


def csrf_of(page: str) -> str:
    """The CSRF token of a dashboard page."""
    found = _CSRF.search(page)
    if not found:
        raise AssertionError("no CSRF token on the page")
    return found[1]


async def sign_in(base: str, username: str, password: str) -> tuple[httpx.AsyncClient, str]:
    """A client signed in to the dashboard at ``base`` and its CSRF token (close the client)."""
    client = httpx.AsyncClient(timeout=15)
    try:
        login = await client.get(f"{base}/auth/login?next=/peers")
        assert login.status_code == 303, login.text
        page = await client.get(login.headers["location"])
        assert page.status_code == 200, page.text
        fields = dict(re.findall(r'type="hidden" name="([a-z_]+)" value="([^"]*)"', page.text))
        fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
        authorize = login.headers["location"].split("?")[0]
        back = await client.post(
            authorize, data={**fields, "username": username, "password": password}
        )
        assert back.status_code == 303, back.text
        done = await client.get(back.headers["location"])
        assert done.status_code == 303, done.text
        peers = await client.get(f"{base}/peers")
        assert peers.status_code == 200, peers.text
        return client, csrf_of(peers.text)
    except BaseException:
        await client.aclose()
        raise
