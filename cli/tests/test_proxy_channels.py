"""Session details through ``meshssh ssh proxy`` that OpenSSH's ssh cannot produce on demand.

An asyncssh client runs the proxy as its ProxyCommand (as OpenSSH does) to send signals and
env, and to see exit signals, EOF and flow control end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncssh
import pytest
from conftest import Mesh


@pytest.fixture
async def via_proxy(mesh: Mesh) -> AsyncIterator[asyncssh.SSHClientConnection]:
    command = [
        str(mesh.launcher),
        "ssh",
        "proxy",
        "--state-dir",
        str(mesh.state_dir),
        "demo-server",
        str(mesh.peer.port),
    ]
    async with asyncssh.connect(
        "demo-server",
        proxy_command=command,
        username="alice",
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        config=None,
    ) as conn:
        yield conn


async def test_a_signal_reaches_the_remote_command(via_proxy: asyncssh.SSHClientConnection) -> None:
    script = "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"
    async with via_proxy.create_process(script) as process:
        async with asyncio.timeout(15):
            assert await process.stdout.readline() == "ready\n"
            process.send_signal("USR1")
            assert await process.stdout.readline() == "got-usr1\n"
            result = await process.wait()
    assert result.exit_status == 3


async def test_an_exit_signal_comes_back_as_a_signal(
    via_proxy: asyncssh.SSHClientConnection,
) -> None:
    result = await asyncio.wait_for(via_proxy.run("kill -TERM $$"), 15)
    assert result.exit_signal is not None
    assert result.exit_signal[0] == "TERM"


async def test_env_stdin_eof_and_exit_status_pass_through(
    via_proxy: asyncssh.SSHClientConnection, mesh: Mesh
) -> None:
    result = await asyncio.wait_for(
        via_proxy.run("cat; echo $LANG; exit 4", input="from stdin\n", env={"LANG": "C.UTF-8"}), 15
    )
    assert result.stdout == "from stdin\nC.UTF-8\n"
    assert result.exit_status == 4
    assert {"LANG": "C.UTF-8"} in mesh.peer.record.env


async def test_large_output_arrives_whole_under_flow_control(
    via_proxy: asyncssh.SSHClientConnection,
) -> None:
    result = await asyncio.wait_for(via_proxy.run("head -c 20000000 /dev/zero", encoding=None), 60)
    assert result.stdout == b"\0" * 20_000_000
    assert result.exit_status == 0
