"""Fixtures of the dashboard's browser tests: the whole system, and the browser itself.

Real processes only: nats-server (the test's), ``meshssh-authn`` (embedded provider, alice an
admin and bob read-only), ``meshssh-policy`` (demo seed, ``--admin-users alice``, on a port
chosen before authn starts so authn can register its redirect URI), and two agents:
``dash-server`` (sshd and relay in proxy mode) and ``dash-laptop`` whose OpenSSH drop-in the
test's ``ssh`` uses. Each test gets its own addresses (127.0.<n>.2 and .3), ports and dirs, so
the tests run side by side under xdist.

The browser is Debian's Chromium driven by Playwright (its own browser download cannot work
here). A failing test that used the browser leaves a screenshot in ``.test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from meshssh_testkit.dashboard import add_user, start_dashboard_authn
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import openssh_available
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import ServiceProcess, script

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "services/policy/demo/seed.json"
ADMIN_TOKEN = "dashboard-e2e-admin-token-0123456789"
PASSWORDS = {"alice": "alice-dash-password-42", "bob": "bob-dash-password-42"}
USER = getpass.getuser()
IS_ROOT = os.geteuid() == 0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_IMG = ROOT / "docs" / "img"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)


def mesh_net() -> str:
    """A 127.0.<n> prefix for this test's peers (distinct per xdist worker and process)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    n = 40 + (int(worker) if worker.isdigit() else 0) * 7 + os.getpid() % 7
    return f"127.0.{n % 250}"


async def run(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class DashSystem:
    """The running system."""

    tmp: Path
    base: str  # the dashboard (and API) URL
    policy: ServiceProcess
    server: AgentProcess
    laptop: AgentProcess
    server_name: str
    ssh_config: Path
    relay_port: int
    net: str = ""  # the 127.0.<n> prefix of this test's peer addresses

    def ssh(self, *args: str, user: str = USER) -> list[str]:
        """OpenSSH through the laptop's drop-in, to the server's relay."""
        return [
            "ssh",
            "-F",
            str(self.ssh_config),
            "-p",
            str(self.relay_port),
            f"{user}@{self.server_name}",
            *args,
        ]

    async def api(self, path: str) -> object:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(self.base + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        r.raise_for_status()
        return r.json()

    async def api_write(self, method: str, path: str, body: dict[str, object]) -> object:
        """A REST write with the admin token (as ``meshctl`` makes it)."""
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.request(
                method,
                self.base + path,
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        r.raise_for_status()
        return r.json() if r.content else None

    async def server_id(self) -> str:
        peers = await self.api("/api/v1/peers")
        assert isinstance(peers, list)
        return str(next(p["id"] for p in peers if p["name"] == self.server_name))

    async def sshd_state(self) -> str:
        status = await self.server.status()
        return str(self.server.child(status, "sshd")["state"])

    async def login(self) -> None:
        """``meshssh login`` on the laptop as alice (the test posts the device page)."""
        proc = await asyncio.create_subprocess_exec(
            script("meshssh"),
            "login",
            "--state-dir",
            str(self.laptop.state_dir),
            "--no-browser",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        url = code = ""
        try:
            async with asyncio.timeout(45):
                while not code:
                    line = (await proc.stderr.readline()).decode()
                    assert line, "meshssh login ended before printing its code"
                    if line.startswith("URL: "):
                        url = line.removeprefix("URL: ").strip()
                    elif line.startswith("Code: "):
                        code = line.removeprefix("Code: ").strip()
            async with httpx.AsyncClient(timeout=10) as http:
                page = await http.post(
                    url,
                    data={
                        "username": "alice",
                        "password": PASSWORDS["alice"],
                        "user_code": code,
                        "confirm": "yes",
                    },
                )
            assert page.status_code == 200, page.text
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def _agent(
    tmp: Path, name: str, ip: str, key: str, api: str, nats_server: NatsServer, *flags: str
) -> AgentProcess:
    agent = await AgentProcess.start(
        tmp / name,
        "--mesh-ip",
        ip,
        "--name",
        name,
        "--setup-key",
        key,
        *nats_server.flags(),
        "--management-url",
        api,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        *flags,
    )
    await agent.wait_status(lambda s: s["registered"], timeout=60)
    return agent


@pytest.fixture
async def dash(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[DashSystem]:
    """Start everything; stop the agents after the test (``services`` stops the rest)."""
    async with dash_system(nats_server, services, tmp_path) as system:
        yield system


DashFactory = Callable[..., contextlib.AbstractAsyncContextManager[DashSystem]]


@pytest.fixture
def dash_factory(nats_server: NatsServer, services: ServiceFactory, tmp_path: Path) -> DashFactory:
    """``async with dash_factory("--gateway-url", url, port=p) as dash``: :func:`dash` with
    more policy flags (test modules cannot import this conftest: importlib mode)."""

    def make(
        *policy_flags: str, port: int = 0
    ) -> contextlib.AbstractAsyncContextManager[DashSystem]:
        return dash_system(nats_server, services, tmp_path, *policy_flags, port=port)

    return make


@contextlib.asynccontextmanager
async def dash_system(
    nats_server: NatsServer,
    services: ServiceFactory,
    tmp_path: Path,
    *policy_flags: str,
    port: int = 0,
) -> AsyncIterator[DashSystem]:
    """The system of :func:`dash`; ``policy_flags`` added to policy's, ``port`` its port."""
    need_tool(openssh_available(), "OpenSSH (ssh)")
    tmp = tmp_path
    users = tmp / "users.json"
    await add_user(users, "alice", PASSWORDS["alice"], email="alice@example.com", groups=("users",))
    await add_user(users, "bob", PASSWORDS["bob"], email="bob@example.com")
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    await start_dashboard_authn(services, nats_server, users, base, "--device-poll-interval", "1")
    policy = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--bus-keys",  # policy signs the peers' JWTs when they register
        str(nats_server.creds("policy").parent),  # the bus keys directory
        "--listen",
        f"127.0.0.1:{port}",
        "--seed",
        str(SEED),
        "--mesh-prefix",
        "127.0.0.0/8",
        "--admin-users",
        "alice",
        "--peer-offline-timeout",
        "6",
        *policy_flags,
        env={"MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=5) as http:
        while (await http.get(f"{base}/api/v1/auth/config")).status_code != 200:
            await asyncio.sleep(0.1)  # until authn has published the provider
    net = mesh_net()
    suffix = re.sub(r"[^a-z0-9]", "", net.split(".")[-1])
    server_name, laptop_name = f"dash{suffix}-server", f"dash{suffix}-laptop"
    flags = [
        "--allow-server-ssh",
        *(["--enable-ssh-root"] if IS_ROOT else []),
        "--disable-ssh-config",
    ]
    server = await _agent(
        tmp, server_name, f"{net}.2", "meshssh-demo-server-key-0001", base, nats_server, *flags
    )
    laptop = None
    try:
        status = await server.wait_status(
            lambda s: (
                server.child(s, "sshd")["state"] == "running"
                and server.child(s, "relay")["state"] == "running"
            ),
            timeout=60,
        )
        dropin = tmp / "ssh_config.d" / "99-meshssh.conf"
        laptop = await _agent(
            tmp,
            laptop_name,
            f"{net}.3",
            "meshssh-demo-laptop-key-0001",
            base,
            nats_server,
            "--ssh-jwt-cache-ttl",
            "600",
            "--ssh-config-file",
            str(dropin),
        )
        async with asyncio.timeout(30):
            while server_name not in (dropin.read_text() if dropin.exists() else ""):
                await asyncio.sleep(0.05)
        config = tmp / "ssh_config"
        config.write_text(f"BatchMode yes\nConnectTimeout 20\nInclude {dropin}\n")
        yield DashSystem(
            tmp, base, policy, server, laptop, server_name, config, int(status["relay_port"]), net
        )
    finally:
        if laptop is not None:
            await laptop.stop()
        await server.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through Playwright."""
    need_tool(HAVE_CHROMIUM, "Chromium (/usr/bin/chromium)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A 1280 px wide page; saves a screenshot when the test fails."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = await context.new_page()
    try:
        yield tab
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            out = ROOT / ".test-artifacts"
            out.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
            with contextlib.suppress(Exception):
                await tab.screenshot(path=str(out / f"{name}.png"), full_page=True)
                print(f"screenshot of the failed test: {out / f'{name}.png'}")
        await context.close()


Shot = Callable[..., Awaitable[None]]


@pytest.fixture
def docs_shot(page: Page) -> Shot:
    """``await docs_shot("peers", width=390)``: save ``docs/img/dashboard-<name>.png`` of the
    page when MESHSSH_DOCS_SCREENSHOTS is set (how docs/dashboard.md's pictures are made)."""
    wanted = bool(os.environ.get("MESHSSH_DOCS_SCREENSHOTS"))

    async def shot(name: str, *, width: int = 1280) -> None:
        if not wanted:
            return
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        if width != 1280:
            await page.set_viewport_size({"width": width, "height": 844})
        await page.screenshot(path=str(DOCS_IMG / f"dashboard-{name}.png"), full_page=True)
        if width != 1280:
            await page.set_viewport_size({"width": 1280, "height": 900})

    return shot
