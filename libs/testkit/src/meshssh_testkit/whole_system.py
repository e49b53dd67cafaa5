"""The whole system with real processes, as a user meets it: for end-to-end tests.

nats-server (the test's: one :class:`~meshssh_testkit.natsd.NatsServer`, or a 3-node
:class:`~meshssh_testkit.natscluster.NatsCluster` whose services create everything with three
replicas), ``meshssh-authn`` (embedded provider; alice added with
``meshssh-authn users add``), ``meshssh-policy`` with the demo seed, one or more server agents
(sshd and the relay in proxy mode; setup key ``meshssh-demo-server-key-0001``) and the laptop
agent ``demo-laptop`` on 127.0.0.3 (JWT cache 600 s, its OpenSSH drop-in written to a temp
file). :func:`sign_in` runs ``meshssh login`` on the laptop and posts authn's login form the way
alice's browser does; then plain ``ssh``/``scp``/``sftp`` with :meth:`System.tool` reach the
servers through the drop-in.

Example::

    async with whole_system(nats_server, services, tmp_path, servers=SERVERS) as system:
        await sign_in(system)
        rc, out, err = await system.run(*system.tool("ssh", "demo-server", f"{USER}@demo-server"))
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.wire import AuditEvent
from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import ServiceProcess, run_command, script
from meshssh_testkit.scrape import read_metric

__all__ = [
    "ADMIN_TOKEN",
    "PASSWORD",
    "SEED",
    "USER",
    "Bus",
    "Server",
    "System",
    "approve",
    "audit_events",
    "read_code",
    "run",
    "sign_in",
    "start_agent",
    "whole_system",
]

ROOT = Path(__file__).resolve().parents[4]
SEED = ROOT / "services/policy/demo/seed.json"
ADMIN_TOKEN = "whole-system-admin-token-0123456789"
PASSWORD = "alice-e2e-password-42"
USER = getpass.getuser()
IS_ROOT = os.geteuid() == 0
SERVER_KEY = "meshssh-demo-server-key-0001"
LAPTOP_KEY = "meshssh-demo-laptop-key-0001"

Bus = NatsServer | NatsCluster
"""What the system runs on: one nats-server, or a cluster (every URL, R3 buckets)."""


async def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run a command; (exit code, stdout, stderr)."""
    result = await run_command(*argv, env=env or {}, timeout=timeout)
    return result.returncode, result.out, result.err


@dataclass(frozen=True)
class Server:
    """A server peer to start: its name, mesh address and extra ``meshssh up`` flags."""

    name: str
    ip: str
    flags: tuple[str, ...] = ()


@dataclass
class System:
    """The running system; ``servers`` by name, each with its relay port and sshd ops URL."""

    tmp: Path
    api: str
    authn: ServiceProcess
    policy: ServiceProcess
    laptop: AgentProcess
    ssh_config: Path
    dropin: Path
    servers: dict[str, AgentProcess] = field(default_factory=dict)
    relay_ports: dict[str, int] = field(default_factory=dict)
    sshd_ops: dict[str, str] = field(default_factory=dict)

    @property
    def server(self) -> AgentProcess:
        """The first server (``demo-server`` in the default set-up)."""
        return next(iter(self.servers.values()))

    @property
    def relay_port(self) -> int:
        """The first server's relay port."""
        return next(iter(self.relay_ports.values()))

    def tool(self, tool: str, *args: str, server: str = "") -> list[str]:
        """``ssh``/``scp``/``sftp`` with the config that includes the agent-written drop-in."""
        port = self.relay_ports[server] if server else self.relay_port
        flag = "-p" if tool == "ssh" else "-P"
        return [tool, "-F", str(self.ssh_config), flag, str(port), *args]

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One admin REST call to policy (``path`` under ``/api/v1``)."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=self.api, headers=headers, timeout=30) as http:
            return await http.request(method, f"/api/v1{path}", json=body)

    async def meshctl(self, *args: str) -> str:
        """Run ``meshctl`` with the admin token; its stdout (asserts exit 0)."""
        code, out, err = await run(
            script("meshctl"),
            *args,
            env={"MESHSSH_API_URL": self.api, "MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        assert code == 0, (args, err)
        return out

    async def device_flows_started(self) -> float:
        """How many device flows authn has started."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"{self.authn.ops_url}/metrics")).text
        wanted = 'meshssh_authn_device_flows_total{outcome="started"} '
        lines = [line for line in text.splitlines() if line.startswith(wanted)]
        return float(lines[0].split()[-1]) if lines else 0.0


async def approve(url: str, code: str) -> None:
    """What alice's browser does: post authn's login form for the code."""
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.post(
            url,
            data={"username": "alice", "password": PASSWORD, "user_code": code, "confirm": "yes"},
        )
    assert page.status_code == 200, page.text


async def start_agent(
    tmp: Path, name: str, ip: str, key: str, api: str, nats_server: Bus, *flags: str
) -> AgentProcess:
    """``meshssh up`` for one peer (proxy relay, OS-picked ports), once registered."""
    agent = await AgentProcess.start(
        tmp / name,
        *("--mesh-ip", ip, "--name", name, "--setup-key", key),
        *nats_server.flags(),
        *("--management-url", api, "--ssh-port", "0", "--relay-port", "0"),
        *("--relay-mode", "proxy"),
        *flags,
    )
    await agent.wait_status(lambda s: s["registered"], timeout=60)
    return agent


async def _add_alice(users: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        script("meshssh-authn"),
        *("users", "add", "alice", "--email", "alice@example.com", "--group", "users"),
        *("--password-stdin", "--users-file", str(users)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, errb = await proc.communicate(PASSWORD.encode() + b"\n")
    assert proc.returncode == 0, errb


async def _start_server(
    tmp: Path, api: str, nats_server: Bus, server: Server
) -> tuple[AgentProcess, int, str, str]:
    """One server agent, once its sshd and relay run.

    Returns:
        The agent, its relay port, and the ops addresses of its sshd and relay.
    """
    ops = f"127.0.0.1:{free_port('127.0.0.1')}"
    relay_ops = f"127.0.0.1:{free_port('127.0.0.1')}"
    flags = [
        *("--allow-server-ssh", "--enable-ssh-sftp", "--enable-ssh-local-port-forwarding"),
        *(["--enable-ssh-root"] if IS_ROOT else []),
        *("--sshd-ops-listen", ops, "--relay-ops-listen", relay_ops, "--disable-ssh-config"),
        *server.flags,
    ]
    agent = await start_agent(tmp, server.name, server.ip, SERVER_KEY, api, nats_server, *flags)
    try:
        status = await agent.wait_status(
            lambda s: (
                agent.child(s, "sshd")["state"] == "running"
                and agent.child(s, "relay")["state"] == "running"
            ),
            timeout=60,
        )
    except BaseException:
        await agent.stop()
        raise
    return agent, status["relay_port"], ops, relay_ops


async def _maps_applied(api: str, sshd_ops: dict[str, str], relay_ops: dict[str, str]) -> None:
    """Wait until each server's sshd and relay hold the map policy holds for it now.

    Called once the laptop registered: policy answers a registration only after the maps of
    that state are written, so the servers' maps now let the laptop in; a test that connects
    at once must not race the servers applying them (a map delta may need a snapshot read).
    """
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        asyncio.timeout(30),
        httpx.AsyncClient(base_url=api, headers=headers, timeout=5) as http,
    ):
        ids = {p["name"]: p["id"] for p in (await http.get("/api/v1/peers")).json()}
        for name in sshd_ops:
            serial = (await http.get(f"/api/v1/peers/{ids[name]}/netmap")).json()["serial"]
            for ops, sample in (
                (sshd_ops[name], "meshssh_sshd_netmap_serial"),
                (relay_ops[name], "meshssh_relay_map_serial"),
            ):
                while ((await read_metric(f"http://{ops}", sample)) or 0) < serial:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # another process applies it


@contextlib.asynccontextmanager
async def whole_system(
    nats_server: Bus,
    services: ServiceFactory,
    tmp: Path,
    *,
    servers: Sequence[Server] = (Server("demo-server", "127.0.0.2"),),
) -> AsyncIterator[System]:
    """Start authn, policy, the servers and the laptop; stop the agents on exit.

    The services are stopped by ``services`` (the fixture's factory).
    """
    users = tmp / "users.json"
    await _add_alice(users)
    authn = await services.start(
        "meshssh-authn",
        *nats_server.authn_flags(),
        *("--listen", "127.0.0.1:0", "--users-file", str(users), "--device-poll-interval", "1"),
    )
    policy = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--bus-keys",  # policy signs the peers' JWTs (and their maps) when they register
        str(nats_server.creds("policy").parent),  # the bus keys directory
        *("--listen", "127.0.0.1:0", "--seed", str(SEED), "--mesh-prefix", "127.0.0.0/8"),
        env={"MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    found = re.search(r"api listening.*url=(http://\S+)", policy.output())
    assert found, policy.output()
    api = found[1]
    async with asyncio.timeout(30), httpx.AsyncClient(timeout=5) as http:
        while (await http.get(f"{api}/api/v1/auth/config")).status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # until authn has published the provider
    dropin = tmp / "ssh_config.d" / "99-meshssh.conf"
    config = tmp / "ssh_config"
    config.write_text(f"BatchMode yes\nConnectTimeout 20\nInclude {dropin}\n")
    started: list[AgentProcess] = []
    try:
        agents: dict[str, AgentProcess] = {}
        relay_ports: dict[str, int] = {}
        sshd_ops: dict[str, str] = {}
        relay_ops: dict[str, str] = {}
        for server in servers:
            (
                agent,
                relay_ports[server.name],
                sshd_ops[server.name],
                relay_ops[server.name],
            ) = await _start_server(tmp, api, nats_server, server)
            agents[server.name] = agent
            started.append(agent)
        laptop = await start_agent(
            tmp,
            "demo-laptop",
            "127.0.0.3",
            LAPTOP_KEY,
            api,
            nats_server,
            *("--ssh-jwt-cache-ttl", "600", "--ssh-config-file", str(dropin)),
        )
        started.append(laptop)
        async with asyncio.timeout(30):
            while not all(  # noqa: ASYNC110 (a file another process writes)
                s.name in (dropin.read_text() if dropin.exists() else "") for s in servers
            ):
                await asyncio.sleep(0.05)  # the laptop agent wrote its drop-in
        await _maps_applied(api, sshd_ops, relay_ops)
        yield System(tmp, api, authn, policy, laptop, config, dropin, agents, relay_ports, sshd_ops)
    finally:
        for agent in reversed(started):
            await agent.stop()


async def read_code(stream: asyncio.StreamReader, seen: list[str] | None = None) -> tuple[str, str]:
    """The ``URL: `` and ``Code: `` lines a command prints on stderr (all lines go to ``seen``)."""
    url = ""
    seen = [] if seen is None else seen
    async with asyncio.timeout(45):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"ended before printing the URL and code: {seen}"
            seen.append(line)
            if line.startswith("URL: "):
                url = line.removeprefix("URL: ").strip()
            elif line.startswith("Code: "):
                return url, line.removeprefix("Code: ").strip()


async def audit_events(
    nc: NATS, *, wait_for: str | None = None, timeout: float = 15
) -> list[AuditEvent]:
    """Every event in the audit stream so far.

    sshd audits after it has answered the client, so a test that just saw a login (or a refusal)
    passes the event kind it expects as ``wait_for``: the stream is read again until an event of
    that kind is in it, or ``timeout`` passes (then what is there is returned, for the assertion
    to show).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        events = await _audit_snapshot(nc)
        if wait_for is None or any(e.kind == wait_for for e in events) or loop.time() > deadline:
            return events
        await asyncio.sleep(0.1)


async def _audit_snapshot(nc: NATS) -> list[AuditEvent]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.AUDIT_STREAM)
    sub = await js.subscribe(subjects.AUDIT_SUBJECTS, ordered_consumer=True)
    try:
        return [
            codec.decode((await sub.next_msg(timeout=5)).data, AuditEvent)
            for _ in range(info.state.messages)
        ]
    finally:
        await sub.unsubscribe()


async def sign_in(system: System) -> None:
    """``meshssh login`` on the laptop, approved the way alice's browser would."""
    login = await asyncio.create_subprocess_exec(
        script("meshssh"),
        *("login", "--state-dir", str(system.laptop.state_dir), "--no-browser"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert login.stderr is not None
    url, code = await read_code(login.stderr)
    await approve(url, code)
    async with asyncio.timeout(30):
        _, err = await login.communicate()
    assert login.returncode == 0, err
