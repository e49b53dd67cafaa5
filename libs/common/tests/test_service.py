"""The service runner, exercised through real service processes and a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import nats.js.errors
import pytest

from meshssh_common import subjects
from meshssh_common.errors import Unavailable
from meshssh_common.kv import open_bucket
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.service import ServiceContext, jetstream_not_ready, run_service
from meshssh_common.settings import ServiceSettings
from meshssh_testkit import NatsServer, run_command_sync, script
from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.plugin import ServiceFactory

SERVICES = ["meshssh-policy", "meshssh-authn", "meshssh-sshd", "meshssh-relay"]


def required_args(name: str, tmp_path: Path, server: NatsServer) -> list[str]:
    """Settings a service needs here: a free port; relay and sshd: a peer id (sshd: a host key);
    policy: the server's bus keys (without them it is not ready: peers cannot register)."""
    if name == "meshssh-policy":
        assert server.keys is not None
        return ["--listen", "127.0.0.1:0", "--bus-keys", str(server.keys.dir)]
    if name == "meshssh-authn":
        return ["--listen", "127.0.0.1:0", "--jwks-signing-key", str(server.jwks_signing_key())]
    if name == "meshssh-relay":
        return ["--peer-id", "p1", "--listen", "127.0.0.1:0"]
    if name == "meshssh-sshd":
        return [
            "--peer-id",
            "t1",
            "--listen",
            "127.0.0.1:0",
            "--host-key",
            str(tmp_path / "ssh_host_ed25519_key"),
        ]
    return []


async def readyz(url: str) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/readyz", timeout=2)).status_code


async def wait_status(url: str, status: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while await readyz(url) != status:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("name", SERVICES)
async def test_each_service_serves_ops_endpoints_and_stops_cleanly_on_sigterm(
    name: str, nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> None:
    role = {"meshssh-policy": "policy", "meshssh-authn": "authn"}.get(name, "admin")
    proc = await services.start(
        name, *nats_server.flags(role), *required_args(name, tmp_path, nats_server)
    )
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{proc.ops_url}/healthz")).status_code == 200
        metrics = await client.get(f"{proc.ops_url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    short = name.removeprefix("meshssh-")
    assert f"meshssh_{short}_nats_connected 1.0" in metrics.text
    started = time.monotonic()
    assert await proc.stop() == 0
    assert time.monotonic() - started < 5


async def test_readyz_follows_nats_without_the_service_restarting(
    nats_server: NatsServer, services: ServiceFactory
) -> None:
    proc = await services.start(
        "meshssh-relay", *nats_server.flags(), "--peer-id", "p1", "--listen", "127.0.0.1:0"
    )
    pid = proc.proc.pid
    assert await readyz(proc.ops_url) == 200
    await nats_server.stop()
    await wait_status(proc.ops_url, 503)
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{proc.ops_url}/readyz")).json()
    assert body["checks"]["nats"] is False
    await nats_server.restart()
    await wait_status(proc.ops_url, 200)
    assert proc.proc.returncode is None
    assert proc.proc.pid == pid
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{proc.ops_url}/metrics")).text
    assert 'meshssh_relay_nats_events_total{event="reconnected"} 1.0' in text


async def test_a_service_started_before_nats_becomes_ready_when_nats_arrives(
    tmp_path: Path, services: ServiceFactory
) -> None:
    server = await NatsServer.start(tmp_path / "js")
    await server.stop()
    try:
        args = required_args("meshssh-sshd", tmp_path, server)
        proc = await services.start("meshssh-sshd", *server.flags(), *args, ready=False)
        await proc.wait_ops()
        await asyncio.sleep(0.5)
        assert await readyz(proc.ops_url) == 503
        await server.restart()
        # sshd binds to the buckets policy and authn own and never creates them: make them,
        # as those services do when they start
        nc = await server.connect()
        try:
            for bucket in (subjects.BUCKET_NETMAPS, subjects.BUCKET_JWKS):
                await open_bucket(nc.jetstream(), bucket)
        finally:
            await nc.close()
        await wait_status(proc.ops_url, 200)
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--ops-listen", "nowhere"], "--ops-listen"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--shutdown-grace", "-1"], "--shutdown-grace"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(args: list[str], names: str) -> None:
    result = run_command_sync(script("meshssh-relay"), *args, timeout=30)
    assert result.returncode == 2, result.describe()
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert names in lines[0]


def test_a_bad_env_setting_names_its_variable() -> None:
    result = run_command_sync(
        script("meshssh-sshd"), env={"MESHSSH_LOG_FORMAT": "yaml"}, timeout=30
    )
    assert result.returncode == 2, result.describe()
    assert "MESHSSH_LOG_FORMAT" in result.err


@pytest.mark.parametrize("name", SERVICES)
def test_help_lists_every_setting_with_its_env_variable(name: str) -> None:
    result = run_command_sync(script(name), "--help", timeout=30, check=True)
    text = " ".join(result.out.split())
    for flag, env in [
        ("--nats-url", "MESHSSH_NATS_URL"),
        ("--nats-creds", "MESHSSH_NATS_CREDS"),
        ("--ops-listen", "_OPS_LISTEN"),
        ("--log-level", "MESHSSH_LOG_LEVEL"),
        ("--log-format", "MESHSSH_LOG_FORMAT"),
    ]:
        assert flag in text
        assert env in text


async def test_a_crashing_serve_ends_the_service_with_exit_code_1(
    nats_server: NatsServer,
) -> None:
    async def serve(ctx: ServiceContext) -> None:
        ctx.ready.set()
        raise RuntimeError("crash")

    settings = ServiceSettings(
        nats_url=nats_server.url, nats_creds=nats_server.creds("admin"), ops_listen="127.0.0.1:0"
    )
    code = await asyncio.wait_for(
        run_service("t", settings, serve, metrics=ServiceMetrics("t")), 10
    )
    assert code == 1


async def test_a_serve_that_ignores_cancellation_is_abandoned_after_the_grace(
    nats_server: NatsServer,
) -> None:
    stop = asyncio.Event()

    async def serve(ctx: ServiceContext) -> None:
        ctx.ready.set()
        stop.set()
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.5)  # slow cleanup beyond the 0.2 s grace
                return

    settings = ServiceSettings(
        nats_url=nats_server.url,
        nats_creds=nats_server.creds("admin"),
        ops_listen="127.0.0.1:0",
        shutdown_grace=0.2,
    )
    started = time.monotonic()
    code = await asyncio.wait_for(
        run_service("t", settings, serve, metrics=ServiceMetrics("t"), stop=stop), 10
    )
    assert code == 1
    assert time.monotonic() - started < 3


def test_a_service_whose_serve_ignores_sigterm_still_exits_within_the_grace(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    import os
    import signal
    import sys
    import textwrap

    prog = tmp_path / "stubborn.py"
    prog.write_text(
        textwrap.dedent("""
        import asyncio, sys
        from meshssh_common.service import ServiceContext, service_main
        from meshssh_common.settings import ServiceSettings

        async def serve(ctx: ServiceContext) -> None:
            ctx.ready.set()
            print("ready", flush=True)
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    continue  # ignores cancellation: a bug shutdown must survive

        sys.exit(service_main("stubborn", ServiceSettings, serve))
    """)
    )
    env = dict(
        os.environ,
        MESHSSH_NATS_URL=nats_server.url,
        MESHSSH_NATS_CREDS=str(nats_server.creds("admin")),
        MESHSSH_SHUTDOWN_GRACE="0.5",
    )
    proc = subprocess.Popen(
        [sys.executable, str(prog), "--ops-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 1
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_service_started_before_jetstream_is_ready_starts_again_until_it_is(
    tmp_path: Path,
) -> None:
    # One node of three: no JetStream quorum, so JetStream answers nothing ("not ready"),
    # until the other two join after a while. Then the start goes through.
    cluster = await NatsCluster.start(tmp_path / "cluster", only=[0])
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def serve(ctx: ServiceContext) -> None:
        try:
            await open_bucket(ctx.js, "t-start", replicas=3)
        except Exception as e:
            failures.append(e)
            raise
        ctx.ready.set()
        stop.set()

    async def join_later() -> None:
        await asyncio.sleep(5)  # two or more starts time out (2 s each) meanwhile
        await asyncio.gather(cluster.revive(1), cluster.revive(2))

    settings = ServiceSettings(
        nats_url=cluster.nodes[0].url,
        nats_creds=cluster.creds("admin"),
        ops_listen="127.0.0.1:0",
    )
    try:
        code, _ = await asyncio.wait_for(
            asyncio.gather(
                run_service("t", settings, serve, metrics=ServiceMetrics("t"), stop=stop),
                join_later(),
            ),
            60,
        )
    finally:
        await cluster.stop()
    assert code == 0, failures[-3:]
    assert len(failures) >= 2, failures  # failed while JetStream was not ready, then retried
    assert all(jetstream_not_ready(e) for e in failures), failures


async def test_a_service_gives_up_when_jetstream_is_not_ready_within_its_start_timeout(
    nats_server: NatsServer,
) -> None:
    attempts: list[BaseException] = []

    async def serve(ctx: ServiceContext) -> None:
        try:
            await ctx.js.account_info()  # the system account has no JetStream: never ready
        except Exception as e:
            attempts.append(e)
            raise

    settings = ServiceSettings(
        nats_url=nats_server.url,
        nats_creds=nats_server.creds("system"),
        ops_listen="127.0.0.1:0",
        nats_start_timeout=1.5,
        nats_request_timeout=0.5,
    )
    started = time.monotonic()
    code = await asyncio.wait_for(
        run_service("t", settings, serve, metrics=ServiceMetrics("t")), 20
    )
    assert code == 1
    # it stops retrying once the next wait would end past the 1.5 s
    assert 0.5 < time.monotonic() - started < 8, time.monotonic() - started
    assert len(attempts) >= 3, attempts  # 0.2 s, then 0.4 s apart
    assert all(jetstream_not_ready(e) for e in attempts), attempts


def test_only_jetstream_not_being_ready_counts_as_not_ready() -> None:
    account = nats.js.errors.APIError.from_error  # what nats-py makes of a JetStream error
    with pytest.raises(nats.js.errors.ServiceUnavailableError) as not_found:
        account({"code": 503, "err_code": 10035, "description": "account not found"})
    assert jetstream_not_ready(not_found.value)
    wrapped = Unavailable("JetStream did not answer")
    wrapped.__cause__ = not_found.value
    assert not jetstream_not_ready(ExceptionGroup("serve", [RuntimeError("a bug"), wrapped]))
    assert jetstream_not_ready(ExceptionGroup("serve", [wrapped]))
    with pytest.raises(nats.js.errors.BadRequestError) as bad:
        account({"code": 400, "err_code": 10058, "description": "stream name already in use"})
    assert not jetstream_not_ready(bad.value)
    assert not jetstream_not_ready(RuntimeError("a bug"))
