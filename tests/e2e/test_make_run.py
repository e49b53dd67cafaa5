"""``make run`` as a user runs it: every endpoint it lists answers, and every signal stops it all.

Each test runs the real ``make run`` in this checkout (``make`` runs ``sync``, then
``scripts/run_local.py`` with the venv's Python), in its own session the way a terminal runs a
job, with its state in a temp dir (``MESHSSH_RUN_DIR``) and the API and provider on ports the
OS picks. The demo's peers sit on fixed addresses (127.0.0.2:22 and :22022, 127.0.0.3), so
only one demo can run per network namespace:

- tests that start a demo take turns on the abstract socket ``@meshssh-demo-tests`` (safe under
  pytest-xdist, and across test runs of other checkouts on this machine: one waits for the
  other's demo to stop); under ``--dist loadgroup`` they also share one xdist group, so they
  run one after another on one worker instead of holding several workers that wait;
- when a demo that no test started is up (a developer's ``make run``; it holds
  ``@meshssh-demo``, see ``scripts/demo_lock.py``), or one starts at the same moment, the
  test skips and says where that demo is.

How the signals arrive is how users send them: closing the terminal hangs up the job's whole
process group (make and run_local.py); ``kill <make's pid>`` sends SIGTERM to make, which
passes it on to its child; Ctrl-C is SIGINT to the process group. Afterwards no process of
the run may be left: every descendant of make recorded while the demo was up is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from meshssh_common.nats_jwt import read_creds
from meshssh_testkit.dashboard import sign_in
from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import terminate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from demo_lock import holder_info  # noqa: E402

TEST_LOCK = "\0meshssh-demo-tests"
START_TIMEOUT = 180.0  # nats, authn, policy, two agents and demo-server's sshd and relay
STOP_TIMEOUT = 60.0
pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("make-run-demo")]


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid``, or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (and ``root``): pid -> start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        started = start_time(pid)
        if started is not None:
            found[pid] = started
            todo += children.get(pid, [])
    return found


def still_running(tree: dict[int, int]) -> dict[int, str]:
    """The processes of ``tree`` that still run (same pid and start time): pid -> command."""
    left: dict[int, str] = {}
    for pid, started in tree.items():
        if start_time(pid) == started:
            with contextlib.suppress(OSError):
                left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return left


@contextlib.asynccontextmanager
async def demo_turn(timeout: float = 420.0) -> AsyncIterator[None]:
    """Wait for our turn to run a demo (one test at a time, across processes)."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                lock.bind(TEST_LOCK)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test's demo did not finish within {timeout:.0f}s")
                await asyncio.sleep(0.5)
        info = holder_info()
        if info is not None:
            pytest.skip(f"a demo that no test started is running: {info}")
        yield
    finally:
        lock.close()


@dataclass
class DemoRun:
    """One ``make run`` and what it wrote."""

    proc: asyncio.subprocess.Process
    run_dir: Path
    output: Path
    endpoints: dict[str, object] = field(default_factory=dict)
    tree: dict[int, int] = field(default_factory=dict)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    async def wait_up(self) -> None:
        """Wait for endpoints.json (skip when another demo won the race for the lock)."""
        path = self.run_dir / "endpoints.json"
        async with asyncio.timeout(START_TIMEOUT):
            while not path.exists():
                if self.proc.returncode is not None:
                    if "already running" in self.text() or "is in use by" in self.text():
                        pytest.skip(f"another demo holds its addresses:\n{self.text()}")
                    pytest.fail(f"make run exited {self.proc.returncode}:\n{self.text()}")
                await asyncio.sleep(0.3)
        self.endpoints = json.loads(path.read_text())
        self.tree = descendants(self.proc.pid)

    async def wait_gone(self) -> dict[int, str]:
        """Wait for make to exit and every recorded process to end; returns what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.proc.wait()
                while still_running(self.tree):
                    await asyncio.sleep(0.2)
        return still_running(self.tree)

    def kill_leftovers(self) -> None:
        """Kill whatever is left of the run (only after a failure)."""
        for pid in {**self.tree, **descendants(self.proc.pid)}:
            if pid != os.getpid() and start_time(pid) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[DemoRun]:
    """``make run`` with its state in ``tmp_path``, up (endpoints.json written)."""
    need_tool(shutil.which("make") is not None, "make")
    async with demo_turn():
        output = tmp_path / "make-run.out"
        env = {
            **os.environ,
            "MESHSSH_RUN_DIR": str(tmp_path / "run"),
            "MESHSSH_DEMO_API_LISTEN": "127.0.0.1:0",
            "MESHSSH_DEMO_PROVIDER_LISTEN": "127.0.0.1:0",
            "MESHSSH_DEMO_GATEWAY_LISTEN": "127.0.0.1:0",
        }
        with output.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                "run",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # a terminal's job: its own process group
            )
        run = DemoRun(proc, tmp_path / "run", output)
        try:
            await run.wait_up()
            yield run
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
            left = await run.wait_gone()
            run.kill_leftovers()
            await terminate(proc, 5)
            assert not left, f"left running: {left}\n{run.text()}"


async def ignore(error: Exception) -> None:
    """An error callback for a connection expected to be refused (nats-py logs it otherwise)."""


def ops_urls(endpoints: dict[str, object]) -> dict[str, str]:
    """Every ops URL in endpoints.json, named ``service`` or ``peer/process``."""
    urls = {name: str(url) for name, url in endpoints["ops"].items()}  # type: ignore[attr-defined]
    for peer, entry in endpoints["peers"].items():  # type: ignore[attr-defined]
        urls |= {f"{peer}/{name}": str(url) for name, url in entry["ops"].items()}
    return urls


async def test_every_endpoint_of_make_run_answers_and_a_second_run_says_where_it_is(
    demo: DemoRun,
) -> None:
    e = demo.endpoints
    # SPEC §11: everything a script may rely on is there.
    for key in (
        "nats_url",
        "api_url",
        "provider_url",
        "ops",
        "admin_token",
        "setup_key",
        "setup_keys",
        "users",
        "ssh_config",
        "peers",
        "nats_creds",
    ):
        assert key in e, key
    assert set(e["ops"]) == {"policy", "authn", "gateway"}  # type: ignore[arg-type]
    # The bus has authentication on: services have their own creds, strangers are refused.
    creds: dict[str, str] = e["nats_creds"]  # type: ignore[assignment]
    assert set(creds) == {"policy", "authn"}
    assert len({read_creds(Path(p)).public_key for p in creds.values()}) == 2  # two identities
    anonymous = NATS()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await anonymous.connect(str(e["nats_url"]), allow_reconnect=False, error_cb=ignore)
    finally:
        await anonymous.close()
    peers: dict[str, dict[str, object]] = e["peers"]  # type: ignore[assignment]
    assert set(peers) == {"demo-server", "demo-laptop"}
    for name, peer in peers.items():
        assert {"name", "mesh_ip", "relay_port", "ssh_port", "state_dir", "ops"} <= set(peer)
        assert peer["name"] == name
    assert set(peers["demo-server"]["ops"]) == {"agent", "sshd", "relay"}  # type: ignore[arg-type]
    assert set(peers["demo-laptop"]["ops"]) == {"agent"}  # type: ignore[arg-type]

    urls = ops_urls(e)
    assert len(urls) == 7, urls  # policy, authn, the gateway; the peers' agents, sshd, relay
    assert any("gateway" in name for name in urls), urls
    async with httpx.AsyncClient(timeout=10) as client:
        for name, url in urls.items():
            r = await client.get(f"{url}/healthz")
            assert r.status_code == 200, f"{name} {url}: {r.status_code}"
        # The user-facing URLs answer on their own paths (they serve no /healthz).
        r = await client.get(f"{e['api_url']}/api/v1/auth/config")
        assert r.status_code == 200
        r = await client.get(f"{e['provider_url']}/.well-known/openid-configuration")
        assert r.status_code == 200
    # The dashboard signs alice in at the embedded provider, out of the box, as its admin.
    passwords: dict[str, str] = e["users"]  # type: ignore[assignment]
    dash, _ = await sign_in(str(e["api_url"]), "alice", passwords["alice"])
    try:
        page = (await dash.get(f"{e['api_url']}/peers")).text
    finally:
        await dash.aclose()
    assert "(admin)" in page
    assert "demo-server" in page

    # demo-laptop's agent marks demo-server as a MeshSSH server for its drop-in (`test -f`).
    marks = Path(str(peers["demo-laptop"]["state_dir"])) / "ssh-servers"
    mark = marks / str(peers["demo-server"]["relay_port"]) / "demo-server"
    async with asyncio.timeout(30):
        while not mark.exists():
            await asyncio.sleep(0.2)
    dropin = demo.run_dir / "ssh_config.d" / "meshssh.conf"
    assert f"test -f {marks}/%p/%h" in dropin.read_text()

    # A second `make run` (another checkout, another run dir) says where the first one is.
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts/run_local.py"),
        "--run-dir",
        str(demo.run_dir.parent / "second-run"),
        "--api-listen",
        "127.0.0.1:0",
        "--provider-listen",
        "127.0.0.1:0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            _, err = await second.communicate()
    finally:
        await terminate(second, 5)
    text = err.decode()
    assert second.returncode == 1, text
    assert "already running" in text
    assert str(demo.run_dir) in text
    runner = [p for p, cmd in still_running(demo.tree).items() if "run_local.py" in cmd]
    assert len(runner) == 1, demo.tree
    assert f"pid {runner[0]}" in text
    assert str(demo.run_dir / "endpoints.json") in text
    assert not (demo.run_dir.parent / "second-run").exists()


@pytest.mark.parametrize(
    "how",
    ["hangup: the terminal closed", "SIGTERM to make"],
)
async def test_make_run_stops_every_process_on_a_hangup_and_on_sigterm(
    demo: DemoRun, how: str
) -> None:
    # The run is up: nats, authn, policy, two agents, demo-server's sshd and relay, make and
    # run_local.py itself.
    assert len(demo.tree) >= 9, demo.tree
    if how.startswith("hangup"):
        os.killpg(demo.proc.pid, signal.SIGHUP)
    else:
        os.kill(demo.proc.pid, signal.SIGTERM)
    left = await demo.wait_gone()
    assert not left, f"left running after {how}: {left}\n{demo.text()}"
    assert "stopping..." in demo.text()
    # What held the demo's addresses is free again.
    server: dict[str, object] = demo.endpoints["peers"]["demo-server"]  # type: ignore[index]
    for port in (server["relay_port"], server["ssh_port"]):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.2", int(port)))  # type: ignore[call-overload]
