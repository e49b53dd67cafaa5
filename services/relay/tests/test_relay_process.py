"""meshssh-relay as a real process in proxy mode, driven by the real OpenSSH client.

The map comes from KV exactly as the management plane publishes it. The SSH server behind the
relay is a real asyncssh server that reads the PROXY header the way sshd does, on its relay
Unix socket (``meshssh_testkit.ssh_upstreams.ProxySshServer``).
"""

from __future__ import annotations

import asyncio
import getpass
import re
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.openssh import OpenSSH
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.process import ServiceProcess
from meshssh_testkit.scrape import read_metric, wait_metric
from meshssh_testkit.signing import write_test_pins
from meshssh_testkit.ssh_upstreams import NativeSshd, ProxySshServer, sshd_binary

USER = getpass.getuser()
_LISTENING = re.compile(r"relay listening .*address=\S+:(\d+)")


async def relay_port(proc: ServiceProcess) -> int:
    async with asyncio.timeout(10):
        while True:
            for line in list(proc.log):
                if m := _LISTENING.search(line):
                    return int(m[1])
            await asyncio.sleep(0.05)


@pytest.fixture
async def netmaps(nc: NATS) -> NATS:
    """The netmaps bucket exists, as the management plane would have made it."""
    await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    return nc


@pytest.fixture
async def sshd(openssh: OpenSSH) -> AsyncIterator[ProxySshServer]:
    with tempfile.TemporaryDirectory(prefix="mshr", dir="/tmp") as short:  # sun_path: 107 bytes
        server = ProxySshServer(
            "127.0.0.2", unix_path=Path(short) / "relay.sock", client_key=openssh.public_key
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def upstream_flags(sshd: ProxySshServer) -> list[str]:
    """How the agent points the relay at sshd: its TCP address and its relay socket."""
    return ["--sshd", f"127.0.0.2:{sshd.port}", "--sshd-socket", str(sshd.unix_path)]


async def start_relay(
    services: ServiceFactory, nats: NatsServer, *args: str
) -> tuple[ServiceProcess, int]:
    proc = await services.start(
        "meshssh-relay",
        *nats.flags(),
        "--peer-id",
        "p1",
        "--listen",
        "127.0.0.2:0",
        "--pins",
        str(write_test_pins(nats.store.parent / "pins")),
        *args,
    )
    return proc, await relay_port(proc)


async def ssh_from(
    openssh: OpenSSH, source: str, port: int, command: str = "hello"
) -> tuple[int, str, str]:
    result = await openssh.ssh("-b", source, "-p", str(port), f"{USER}@127.0.0.2", command)
    return result.returncode, result.out, result.err


async def test_openssh_reaches_sshd_through_the_relay_and_the_server_sees_the_original_source(
    netmaps: NATS,
    nats_server: NatsServer,
    services: ServiceFactory,
    openssh: OpenSSH,
    sshd: ProxySshServer,
) -> None:
    await put_map(netmaps, make_map(1))
    relay, port = await start_relay(services, nats_server, *upstream_flags(sshd))
    await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 1)
    openssh.trust("127.0.0.2", port, sshd.public_line)
    code, out, err = await ssh_from(openssh, "127.0.0.3", port, "whoami-ish")
    assert code == 0, err
    assert out.strip() == "source=127.0.0.3 command=whoami-ish"
    assert sshd.headers[0].destination == ("127.0.0.2", port)
    sample = 'meshssh_relay_connections_total{result="accepted_sshd"}'
    assert await read_metric(relay.ops_url, sample) == 1


async def test_a_source_without_a_rule_is_refused_at_the_relay(
    netmaps: NATS,
    nats_server: NatsServer,
    services: ServiceFactory,
    openssh: OpenSSH,
    sshd: ProxySshServer,
) -> None:
    await put_map(netmaps, make_map(1, sources=["127.0.0.3/32"]))
    relay, port = await start_relay(services, nats_server, *upstream_flags(sshd))
    await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 1)
    openssh.trust("127.0.0.2", port, sshd.public_line)
    code, _, err = await ssh_from(openssh, "127.0.0.4", port)
    assert code == 255
    assert "closed" in err or "reset" in err, err
    assert sshd.accepted == 0  # sshd never saw it
    sample = 'meshssh_relay_connections_total{result="no_rule"}'
    assert await read_metric(relay.ops_url, sample) == 1
    # A new map that adds the source opens the door without a restart.
    await put_map(netmaps, make_map(2, sources=["127.0.0.3/32", "127.0.0.4/32"]))
    await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 2)
    code, out, err = await ssh_from(openssh, "127.0.0.4", port)
    assert code == 0, err
    assert out.startswith("source=127.0.0.4 ")


async def test_with_ssh_disabled_for_the_peer_connections_go_to_the_native_sshd(
    netmaps: NATS,
    nats_server: NatsServer,
    services: ServiceFactory,
    openssh: OpenSSH,
    sshd: ProxySshServer,
    tmp_path: Path,
) -> None:
    need_tool(sshd_binary() is not None, "OpenSSH's sshd (openssh-server)")
    need_tool(USER == "root", "root (sshd -i needs its privilege separation)")
    native = NativeSshd(tmp_path / "native", "127.0.0.2", client_key=openssh.public_key)
    await native.start()
    try:
        await put_map(netmaps, make_map(1, ssh_enabled=False))
        relay, port = await start_relay(
            services,
            nats_server,
            *upstream_flags(sshd),
            "--native-upstream",
            f"127.0.0.2:{native.port}",
        )
        await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 1)
        openssh.trust("127.0.0.2", port, native.public_line)
        code, out, err = await ssh_from(openssh, "127.0.0.3", port, "echo native $((6*7))")
        assert code == 0, err
        assert out.strip() == "native 42"  # a real shell on OpenSSH's sshd, not our server
        assert native.accepted == 1
        assert sshd.headers == []
        # SSH switched on: the same port now reaches meshssh's server.
        await put_map(netmaps, make_map(2, ssh_enabled=True))
        await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 2)
        openssh.trust("127.0.0.2", port, sshd.public_line)
        code, out, err = await ssh_from(openssh, "127.0.0.3", port)
        assert code == 0, err
        assert out.startswith("source=127.0.0.3 ")
    finally:
        await native.stop()


async def test_a_taken_port_exits_2_with_a_message_that_says_what_to_do(
    nats_server: NatsServer, services: ServiceFactory
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen(1)
    try:
        proc = await services.start(
            "meshssh-relay",
            *nats_server.flags(),
            "--peer-id",
            "p1",
            "--listen",
            f"127.0.0.2:{taken.getsockname()[1]}",
            ready=False,
        )
        async with asyncio.timeout(15):
            code = await proc.proc.wait()
        await proc.stop()
        assert code == 2
        assert "address in use" in proc.output()
        assert "--native-upstream" in proc.output()
    finally:
        taken.close()


async def test_proxy_mode_with_sshd_but_no_sshd_socket_exits_2(
    nats_server: NatsServer, services: ServiceFactory
) -> None:
    proc = await services.start(
        "meshssh-relay",
        *nats_server.flags(),
        "--peer-id",
        "p1",
        "--listen",
        "127.0.0.2:0",
        "--sshd",
        "127.0.0.2:22022",
        ready=False,
    )
    async with asyncio.timeout(15):
        code = await proc.proc.wait()
    await proc.stop()
    assert code == 2
    assert "--sshd-socket" in proc.output()
    assert "never on TCP" in proc.output()


async def test_a_map_published_after_nats_restarts_applies_within_seconds(
    nats_server: NatsServer, netmaps: NATS, services: ServiceFactory
) -> None:
    await put_map(netmaps, make_map(1))
    relay, _ = await start_relay(services, nats_server)
    await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 1)
    await nats_server.restart()
    await wait_metric(relay.ops_url, 'meshssh_relay_nats_events_total{event="reconnected"}', 1)
    async with asyncio.timeout(10):  # the client reconnects by itself; wait until it has
        while not netmaps.is_connected:
            await asyncio.sleep(0.05)
    await put_map(netmaps, make_map(2, ssh_enabled=False))
    # Without restarting its watch, the relay heard of it only ~18 s later.
    await wait_metric(relay.ops_url, "meshssh_relay_map_serial", 2, timeout=8)
    await wait_metric(relay.ops_url, "meshssh_relay_ssh_enabled", 0)
