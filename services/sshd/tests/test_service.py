"""meshssh-sshd as a process: graceful drain on SIGTERM, metrics, live-session reports, and
the settings it refuses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.host_keys import load_or_create_host_key
from meshssh_common.signed_doc import Signer
from meshssh_common.wire import SessionsReport
from meshssh_testkit import NatsServer, run_command, script
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.signing import write_test_pins

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, SshdFactory


class _Listening:
    """What a started process said in its "ssh listening" line."""

    def __init__(self, host: str, port: int, host_key: Any) -> None:
        self.host, self.port, self.host_key = host, port, host_key


async def start_process(
    services: ServiceFactory, nats_server: NatsServer, tmp_path: Path, *flags: str
) -> tuple[Any, _Listening]:
    key_path = tmp_path / "host_key"
    proc = await services.start(
        "meshssh-sshd",
        *nats_server.flags(),
        "--peer-id",
        "server-1",
        "--listen",
        "127.0.0.2:0",
        "--host-key",
        str(key_path),
        "--pins",
        str(write_test_pins(tmp_path)),
        "--kill-grace",
        "0.5",
        *flags,
    )
    match = re.search(r"ssh listening.*address=127\.0\.0\.2:(\d+)", proc.output())
    assert match is not None, proc.output()
    return proc, _Listening("127.0.0.2", int(match[1]), load_or_create_host_key(key_path))


async def test_sigterm_stops_accepting_lets_sessions_finish_then_exits_0(
    mesh: Mesh,
    nats_server: NatsServer,
    services: ServiceFactory,
    tmp_path: Path,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map()
    proc, sshd = await start_process(services, nats_server, tmp_path)
    assert oct(os.stat(tmp_path / "host_key").st_mode & 0o777) == "0o600"
    client = client_for(sshd)
    session = await asyncio.create_subprocess_exec(
        *client.spawn_args("echo started; sleep 1; echo finished", user=local_user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **client.env(mesh.exchange.mint("alice-id"))},  # sshd's default
    )
    assert session.stdout is not None
    assert await asyncio.wait_for(session.stdout.readline(), 10) == b"started\n"
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{proc.ops_url}/metrics")).text
    assert "meshssh_sshd_active_sessions 1.0" in text
    assert 'meshssh_sshd_connections_total{outcome="accepted"} 1.0' in text
    proc.proc.terminate()
    await asyncio.sleep(0.3)
    refused = await client.ssh("true", token=mesh.exchange.mint("alice-id"), user=local_user)
    assert refused.returncode == 255  # no longer accepting
    rest, _ = await asyncio.wait_for(session.communicate(), 10)
    assert rest == b"finished\n"
    assert session.returncode == 0
    assert await proc.stop() == 0
    assert "drained" in proc.output()


async def test_bad_settings_exit_2_naming_the_setting(tmp_path: Path) -> None:
    cases = [
        (["--listen", "127.0.0.2:0", "--peer-id", "a.b"], "--peer-id"),
        (["--listen", "127.0.0.2:0", "--peer-id", "p", "--relay-uid", "-1"], "--relay-uid"),
        (  # removed: TCP never takes a PROXY header (the relay uses --relay-socket)
            ["--listen", "127.0.0.2:0", "--peer-id", "p", "--trusted-relay", "127.0.0.1"],
            "--trusted-relay",
        ),
        (["--peer-id", "p"], "--listen"),
    ]
    for args, name in cases:
        result = await run_command(script("meshssh-sshd"), *args, timeout=30)
        assert result.returncode == 2, result.describe()
        assert len(result.err.strip().splitlines()) == 1, result.describe()
        assert name in result.err


async def test_a_taken_listen_address_exits_2(
    mesh: Mesh, nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> None:
    _, first = await start_process(services, nats_server, tmp_path)
    second = await services.start(
        "meshssh-sshd",
        *nats_server.flags(),
        "--peer-id",
        "server-1",
        "--listen",
        f"127.0.0.2:{first.port}",
        "--host-key",
        str(tmp_path / "k2"),
        ready=False,
    )
    assert await asyncio.wait_for(second.proc.wait(), 15) == 2
    assert "--listen" in second.output()


async def test_live_sessions_are_reported_for_the_agents_heartbeat(
    mesh: Mesh,
    nc: NATS,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map()
    reports: asyncio.Queue[SessionsReport] = asyncio.Queue()

    async def on_report(msg: Any) -> None:
        await reports.put(codec.decode(msg.data, SessionsReport))

    sub = await nc.subscribe(subjects.sshd_sessions(mesh.peer_id), cb=on_report)
    sshd = await sshd_factory.start(sessions_report_interval=30)
    client = client_for(sshd)
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("echo up; exec sleep 30", user=local_user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **client.env(issuer.mint("alice-id"))},
    )
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 10)
        async with asyncio.timeout(5):
            while not (report := await reports.get()).sessions:
                pass
        (info,) = report.sessions
        assert (info.local_user, info.jwt_user, info.command) == (local_user, "alice-id", "echo +4")
        assert info.source.startswith("127.0.0.3:")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    async with asyncio.timeout(5):
        while (await reports.get()).sessions:
            pass
    await sub.unsubscribe()


async def test_a_map_or_jwks_signed_with_a_wrong_key_is_refused_counted_and_the_old_one_stays(
    mesh: Mesh,
    nats_server: NatsServer,
    services: ServiceFactory,
    tmp_path: Path,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map()
    # IdP tokens here: this test is about the documents, not the token kind.
    proc, sshd = await start_process(services, nats_server, tmp_path, "--accept-idp-tokens")
    client = client_for(sshd)
    ok = await client.ssh("echo in", token=issuer.mint("alice-id"), user=local_user)
    assert ok.returncode == 0, ok.err
    forger = Signer(Ed25519PrivateKey.generate(), kind="map")
    await mesh.publish_map(ssh_enabled=False, grants=(), signer=forger)  # would shut SSH off
    await mesh.publish_jwks(signer=Signer(Ed25519PrivateKey.generate(), kind="jwks"))
    want = (
        'meshssh_sshd_signed_doc_refused_total{kind="map",reason="unknown_key"} 1.0',
        'meshssh_sshd_signed_doc_refused_total{kind="jwks",reason="unknown_key"} 1.0',
    )
    async with httpx.AsyncClient() as http, asyncio.timeout(10):
        while True:
            text = (await http.get(f"{proc.ops_url}/metrics")).text
            if all(w in text for w in want):
                break
            await asyncio.sleep(0.05)
    assert "refused a network map" in proc.output()
    still = await client.ssh("echo still", token=issuer.mint("alice-id"), user=local_user)
    assert still.returncode == 0, still.err  # the old map and the old keys stay in force
    assert still.out.strip() == "still"
    assert "meshssh_sshd_netmap_serial 1.0" in text
