"""The whole system with real processes only, as a user meets it.

nats-server, ``meshssh-authn`` (embedded provider; alice added with ``meshssh-authn users
add``), ``meshssh-policy`` with the demo seed, and two agents: ``demo-server`` (127.0.0.2,
sshd and the relay in proxy mode) and ``demo-laptop`` (127.0.0.3, JWT cache 600 s, its
OpenSSH drop-in written to a temp file). The local OS user running the test signs in with
``meshssh login`` (the test posts authn's login form the way a browser does), then plain
OpenSSH ``ssh``, ``scp`` and ``sftp`` reach demo-server through the agent-written drop-in
with alice's identity; the dashboard switch (``meshctl peers ssh disable``) ends the live
session and refuses new ones. Ten ``ssh`` runs at once with an empty cache share one device
flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS

from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import openssh_available
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.process import script
from meshssh_testkit.whole_system import (
    ADMIN_TOKEN,
    USER,
    System,
    approve,
    audit_events,
    run,
    sign_in,
    whole_system,
)


@pytest.fixture
async def system(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[System]:
    need_tool(openssh_available(), "OpenSSH (ssh, scp, sftp)")
    async with whole_system(nats_server, services, tmp_path) as running:
        yield running


@pytest.mark.parametrize("nats_server", ["plaintext", "tls"], indirect=True)
async def test_a_user_signs_in_once_and_openssh_reaches_the_server_as_alice_until_revoked(
    system: System, nc: NATS
) -> None:
    async with httpx.AsyncClient(timeout=5) as http:  # sshd's ops port is the one asked for
        assert (
            await http.get(f"http://{system.sshd_ops['demo-server']}/metrics")
        ).status_code == 200
    await sign_in(system)

    rc, out, err = await run(*system.tool("ssh", f"{USER}@demo-server", "id -un"))
    assert (rc, out.strip()) == (0, USER), err
    assert "Code: " not in err  # the laptop agent's cache answered

    src = system.tmp / "hello.txt"
    src.write_text("hello from the laptop\n")
    remote = f"/tmp/meshssh-e2e-{os.getpid()}.txt"
    rc, _, err = await run(*system.tool("scp", str(src), f"{USER}@demo-server:{remote}"))
    assert rc == 0, err
    back = system.tmp / "back.txt"
    rc, _, err = await run(*system.tool("scp", f"{USER}@demo-server:{remote}", str(back)))
    assert rc == 0, err
    assert back.read_text() == "hello from the laptop\n"
    batch = system.tmp / "batch"
    batch.write_text(f"get {remote} {system.tmp / 'sftp.txt'}\nrm {remote}\n")
    rc, _, err = await run(*system.tool("sftp", "-b", str(batch), f"{USER}@demo-server"))
    assert rc == 0, err
    assert (system.tmp / "sftp.txt").read_text() == "hello from the laptop\n"
    assert not await asyncio.to_thread(Path(remote).exists)

    events = await audit_events(nc, wait_for="auth-accepted")
    accepted = [e for e in events if e.kind == "auth-accepted"]
    assert accepted, events
    assert {e.jwt_user for e in accepted} == {"alice"}
    assert all(e.source_addr.startswith("127.0.0.3") for e in accepted), accepted
    assert {e.local_user for e in accepted} == {USER}
    sessions = [e for e in events if e.kind in ("auth-accepted", "session-start", "sftp-start")]
    assert {e.source_peer_name for e in sessions} == {"demo-laptop"}, sessions  # from the map

    # The dashboard switch ends the live session and refuses new connections.
    live = await asyncio.create_subprocess_exec(
        *system.tool("ssh", f"{USER}@demo-server", "echo started; exec sleep 60"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert live.stdout is not None
    async with asyncio.timeout(30):
        assert (await live.stdout.readline()).strip() == b"started"
    await system.meshctl("peers", "ssh", "disable", "demo-server")
    try:
        async with asyncio.timeout(20):
            _, live_err = await live.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            live.kill()
    assert live.returncode != 0
    # sshd's "access revoked" usually arrives; when the agent's SIGTERM to sshd and the relay
    # wins the race (a loaded machine), the proxy still tells the user to check revocation.
    assert b"revoked" in live_err, live_err
    rc, out, err = await run(*system.tool("ssh", f"{USER}@demo-server", "id -un"))
    assert rc != 0
    assert out == ""


async def drain(proc: asyncio.subprocess.Process, lines: list[str]) -> tuple[int, str]:
    """Wait for ``proc``, collecting its stderr lines as they come; (exit code, stdout)."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = asyncio.ensure_future(proc.stdout.read())
    while line := await proc.stderr.readline():
        lines.append(line.decode())
    return await proc.wait(), (await out).decode()


async def test_ten_ssh_runs_at_once_with_an_empty_cache_share_one_device_flow(
    system: System,
) -> None:
    assert await system.device_flows_started() == 0
    procs = [
        await asyncio.create_subprocess_exec(
            *system.tool("ssh", f"{USER}@demo-server", "id -un"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(10)
    ]
    seen: list[list[str]] = [[] for _ in procs]
    runs = asyncio.gather(*(drain(p, lines) for p, lines in zip(procs, seen, strict=True)))
    try:
        async with asyncio.timeout(45):  # the first run to show the prompt
            while not (shown := [ln for lines in seen for ln in lines if ln.startswith("Code: ")]):
                await asyncio.sleep(0.05)
        url = next(ln for lines in seen for ln in lines if ln.startswith("URL: "))
        await approve(url.removeprefix("URL: ").strip(), shown[0].removeprefix("Code: ").strip())
        async with asyncio.timeout(90):
            results = await runs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.gather(runs, return_exceptions=True)
    for (code, out), lines in zip(results, seen, strict=True):
        assert (code, out.strip()) == (0, USER), lines
    codes = {ln for lines in seen for ln in lines if ln.startswith("Code: ")}
    assert len(codes) == 1, seen  # every run that showed a code showed the same one
    assert await system.device_flows_started() == 1


async def test_a_nats_restart_mid_session_drops_nothing_and_maps_resync_within_5_s(
    system: System, nats_server: NatsServer
) -> None:
    await sign_in(system)
    live = await asyncio.create_subprocess_exec(
        *system.tool("ssh", f"{USER}@demo-server", "while read l; do echo got-$l; done"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert live.stdin is not None
    assert live.stdout is not None

    async def echo(n: int) -> None:
        assert live.stdin is not None
        assert live.stdout is not None
        live.stdin.write(f"{n}\n".encode())
        await live.stdin.drain()
        async with asyncio.timeout(20):
            assert (await live.stdout.readline()).strip() == f"got-{n}".encode()

    try:
        await echo(1)
        before = (await system.laptop.status())["serial"]
        await nats_server.restart()
        for agent in (system.server, system.laptop):  # both back on the bus, on their own creds
            await agent.wait_status(lambda s: s["nats_connected"], timeout=15)
        await echo(2)  # the session never noticed
        async with asyncio.timeout(15):  # until policy is back on the bus and takes the write
            while True:
                code, _, _ = await run(
                    script("meshctl"),
                    *("peers", "ssh", "enable", "demo-laptop"),  # changes the laptop's map
                    env={"MESHSSH_API_URL": system.api, "MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
                )
                if code == 0:
                    break
                await asyncio.sleep(0.2)
        await system.laptop.wait_status(lambda s: s["serial"] > before, timeout=5)
        await echo(3)
        live.stdin.close()
        async with asyncio.timeout(20):
            _, err = await live.communicate()
        assert live.returncode == 0, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            live.kill()
