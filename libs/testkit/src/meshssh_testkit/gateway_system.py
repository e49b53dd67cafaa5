"""A real system for browser-terminal tests and benches: authn, policy, a server, a gateway.

Real processes only: ``meshssh-authn`` (embedded provider: alice in group ``users``, bob in
none), ``meshssh-policy`` (demo seed, ``--gateway-url`` set to the gateway's address, picked
before it starts), one server agent (sshd and relay, proxy mode) and ``meshssh-gateway``
registered with a ``kind: gateway`` setup key that puts it in ``users`` (so the seed's
"users reach servers on TCP 22" policy lets it reach the server's sshd on 22022). Addresses
are ``<net>.2`` (server) and ``<net>.5`` and up (gateways), so tests run side by side.

A terminal is opened as the dashboard's page does: sign in (the real OIDC code flow,
:func:`meshssh_testkit.dashboard.sign_in`), post the Connect form, take the ticket from the
redirect, and open ``ws://<gateway>/v1/terminal?ticket=...`` with the dashboard's ``Origin``
and session cookie (:meth:`GatewaySystem.open_terminal`).

Example::

    async with gateway_system(nats_server, services, tmp_path, net="127.0.61") as system:
        async with system.browser("alice") as browser:
            ws = await system.open_terminal(browser, cols=100, rows=30)
            await ws.send(b"echo ws-ok; exit")
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from meshssh_testkit.dashboard import add_user, sign_in
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import ServiceProcess

__all__ = [
    "ADMIN_TOKEN",
    "GATEWAY_KEY",
    "PASSWORDS",
    "USER",
    "Browser",
    "GatewaySystem",
    "gateway_system",
    "read_until",
]

ROOT = Path(__file__).resolve().parents[4]
SEED = ROOT / "services/policy/demo/seed.json"
ADMIN_TOKEN = "gateway-tests-admin-token-0123456789"
GATEWAY_KEY = "meshssh-test-gateway-key-0001"
PASSWORDS = {"alice": "alice-gw-password-42", "bob": "bob-gw-password-42"}
USER = getpass.getuser()
_SESSION_COOKIE = "meshssh_session"


@dataclass
class Browser:
    """A signed-in dashboard client: its cookie jar and CSRF token."""

    http: httpx.AsyncClient
    csrf: str

    @property
    def cookie(self) -> str:
        """The dashboard session cookie value."""
        return self.http.cookies.get(_SESSION_COOKIE) or ""


@dataclass
class GatewaySystem:
    """The running system (see the module docstring)."""

    tmp: Path
    base: str  # the dashboard and REST API
    net: str
    nats_server: NatsServer
    services: ServiceFactory
    server: AgentProcess
    server_id: str
    server_name: str
    gateway: ServiceProcess | None = None  # set once it registered
    ws_base: str = ""  # ws://host:port of the gateway
    extra: list[ServiceProcess] = field(default_factory=list)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call with the admin token; the decoded body (asserts success)."""
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.request(
                method,
                self.base + path,
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert r.is_success, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    async def start_gateway(self, name: str, host: int, *flags: str) -> tuple[ServiceProcess, str]:
        """Another gateway (``<net>.<host>``), registered; returns it and its ws:// base."""
        proc, url = await _start_gateway(
            self.services, self.tmp, self.nats_server, self.base, name, f"{self.net}.{host}", flags
        )
        self.extra.append(proc)
        return proc, url

    @contextlib.asynccontextmanager
    async def browser(self, user: str) -> AsyncIterator[Browser]:
        """``user`` signed in to the dashboard (the client is closed after)."""
        http, csrf = await sign_in(self.base, user, PASSWORDS[user])
        try:
            yield Browser(http, csrf)
        finally:
            await http.aclose()

    async def ticket(self, browser: Browser, *, local_user: str = USER, peer: str = "") -> str:
        """Post the Connect form as the dashboard does; the ticket from the redirect."""
        r = await browser.http.post(
            f"{self.base}/ui/peers/{peer or self.server_id}/terminal",
            data={"local_user": local_user, "csrf": browser.csrf},
            headers={"Origin": self.base},
        )
        assert r.status_code == 303, (r.status_code, r.text[:2000])
        found = re.search(r"ticket=([A-Za-z0-9_-]+)", r.headers["location"])
        assert found, r.headers["location"]
        return found[1]

    async def open_terminal(
        self,
        browser: Browser,
        *,
        ticket: str | None = None,
        ws_base: str = "",
        cols: int = 80,
        rows: int = 24,
        origin: str = "",
        no_origin: bool = False,
        **options: Any,
    ) -> ClientConnection:
        """A WebSocket to ``/v1/terminal`` as the terminal page opens it.

        ``origin`` defaults to the dashboard's; ``no_origin`` sends none. ``ticket=""`` sends
        none; None gets a fresh one.
        """
        if ticket is None:
            ticket = await self.ticket(browser)
        query = f"ticket={ticket}&" if ticket else ""
        url = f"{ws_base or self.ws_base}/v1/terminal?{query}cols={cols}&rows={rows}"
        return await connect(
            url,
            origin=None if no_origin else (origin or self.base),  # type: ignore[arg-type]
            additional_headers={"Cookie": f"{_SESSION_COOKIE}={browser.cookie}"},
            open_timeout=30,
            **options,
        )

    async def gateway_metrics(self, gateway: ServiceProcess | None = None) -> str:
        """The gateway's ``/metrics`` text."""
        proc = gateway or self.gateway
        assert proc is not None
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{proc.ops_url}/metrics")).text


async def read_until(
    ws: ClientConnection, wanted: bytes | re.Pattern[bytes], *, timeout: float = 20
) -> tuple[bytes, dict[str, Any] | None]:
    """Terminal output until ``wanted`` (bytes or a pattern) appears, or the last frame.

    Returns:
        The output read, and the last frame (None when ``wanted`` appeared first).
    """
    out = b""

    def found() -> bool:
        return wanted in out if isinstance(wanted, bytes) else bool(wanted.search(out))

    async with asyncio.timeout(timeout):
        while not found():
            frame = await ws.recv()
            if isinstance(frame, str):
                return out, json.loads(frame)
            out += frame
    return out, None


async def _start_gateway(
    services: ServiceFactory,
    tmp: Path,
    nats_server: NatsServer,
    api: str,
    name: str,
    ip: str,
    flags: tuple[str, ...] | list[str],
    port: int = 0,
) -> tuple[ServiceProcess, str]:
    port = port or free_port()
    proc = await services.start(
        "meshssh-gateway",
        "--nats-url",
        nats_server.url,
        *(["--nats-ca", str(nats_server.ca)] if nats_server.ca is not None else []),
        *("--management-url", api, "--mesh-ip", ip, "--name", name),
        *("--state-dir", str(tmp / name), "--listen", f"127.0.0.1:{port}"),
        *("--allowed-origin", api, "--ops-listen", "127.0.0.1:0"),
        *flags,
        env={"MESHSSH_SETUP_KEY": GATEWAY_KEY},
    )
    return proc, f"ws://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def gateway_system(
    nats_server: NatsServer,
    services: ServiceFactory,
    tmp: Path,
    *,
    net: str,
    gateway_flags: tuple[str, ...] = (),
    server_flags: tuple[str, ...] = (),
) -> AsyncIterator[GatewaySystem]:
    """Start everything; the server agent is stopped on exit (``services`` stops the rest)."""
    users = tmp / "users.json"
    await add_user(users, "alice", PASSWORDS["alice"], email="alice@example.com", groups=("users",))
    await add_user(users, "bob", PASSWORDS["bob"], email="bob@example.com")
    port, gw_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    await services.start(
        "meshssh-authn",
        *nats_server.authn_flags(),
        *("--listen", "127.0.0.1:0", "--users-file", str(users)),
        *("--dashboard-redirect-uri", f"{base}/auth/callback"),
    )
    await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        *("--bus-keys", str(nats_server.creds("policy").parent)),
        *("--listen", f"127.0.0.1:{port}", "--seed", str(SEED), "--mesh-prefix", "127.0.0.0/8"),
        *("--gateway-url", f"http://127.0.0.1:{gw_port}"),
        env={"MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=5) as http:
        while (await http.get(f"{base}/api/v1/auth/config")).status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # until authn has published the provider
    name = f"gw{net.split('.')[-1]}-server"
    server = await AgentProcess.start(
        tmp / name,
        *("--mesh-ip", f"{net}.2", "--name", name, "--setup-key", "meshssh-demo-server-key-0001"),
        *nats_server.flags(),
        *("--management-url", base, "--ssh-port", "0", "--relay-port", "0"),
        *("--relay-mode", "proxy", "--allow-server-ssh", "--disable-ssh-config"),
        *server_flags,
    )
    try:
        await server.wait_status(
            lambda s: s["registered"] and server.child(s, "sshd")["state"] == "running",
            timeout=60,
        )
        system = GatewaySystem(tmp, base, net, nats_server, services, server, "", name)
        peers = await system.api("GET", "/api/v1/peers")
        system.server_id = next(p["id"] for p in peers if p["name"] == name)
        await system.api(
            "POST",
            "/api/v1/setup-keys",
            {
                "name": "browser gateways",
                "kind": "gateway",
                "key": GATEWAY_KEY,
                "expires_in": 0,
                "auto_groups": ["users"],
            },
        )
        system.gateway, system.ws_base = await _start_gateway(
            services, tmp, nats_server, base, f"gw{net.split('.')[-1]}-gw", f"{net}.5",
            gateway_flags, gw_port,
        )  # fmt: skip
        yield system
    finally:
        await server.stop()
