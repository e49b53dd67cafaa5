"""The agent keeps the OpenSSH drop-in current as its map changes, removes it on ``meshssh
down``, and honours the opt-outs. A real agent process; the management plane is the
``policy_standin`` of the testkit. The drop-in always goes to a temp path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client as NATS

from meshssh_common.wire import RemotePeer
from meshssh_testkit import script
from meshssh_testkit.netmaps import make_map
from meshssh_testkit.peer_agent import AgentProcess
from meshssh_testkit.policy_standin import PolicyStandIn

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"
SERVER = RemotePeer(id="p2", name="demo-server", mesh_ip="127.0.0.2", ssh_host_key=KEY)
DB = RemotePeer(id="p3", name="db", mesh_ip="127.0.0.4", ssh_host_key=KEY)
NO_KEY = RemotePeer(id="p4", name="printer", mesh_ip="127.0.0.5")


async def start_agent(state: Path, nats_url: str, *args: str,
                      env: dict[str, str] | None = None) -> AgentProcess:  # fmt: skip
    agent = await AgentProcess.start(
        state, "--mesh-ip", "127.0.0.3", "--name", "laptop", "--nats-url", nats_url,
        "--setup-key", "KEY", "--ssh-port", "0", "--relay-port", "0", *args, env=env,
    )  # fmt: skip
    await agent.wait_status(lambda s: s["registered"])
    return agent


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(15):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


def dropin_gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_the_agent_rewrites_the_dropin_on_every_map_and_down_removes_it(
    nc: NATS, nats_url: str, tmp_path: Path
) -> None:
    dropin = tmp_path / "ssh" / "99-meshssh.conf"
    policy = await PolicyStandIn.start(nc, netmap=make_map(1, mesh_ip="127.0.0.3",
                                       ssh_enabled=False, remote_peers=[SERVER]))  # fmt: skip
    state = tmp_path / "state"
    agent = await start_agent(state, nats_url, "--ssh-config-file", str(dropin))
    try:
        await until(lambda: "demo-server" in text(dropin), "the first map's peer is listed")
        first = text(dropin)
        assert 'Match host "127.0.0.2,demo-server" exec' in first
        assert f"--state-dir {state}" in first
        assert "ssh proxy" in first

        await policy.publish(make_map(2, mesh_ip="127.0.0.3", ssh_enabled=False,
                                      remote_peers=[SERVER, DB, NO_KEY]))  # fmt: skip
        await until(lambda: "127.0.0.4" in text(dropin), "a new peer is added")
        assert "printer" not in text(dropin)  # no pinned host key: plain OpenSSH handles it

        await policy.publish(make_map(3, mesh_ip="127.0.0.3", ssh_enabled=False,
                                      remote_peers=[DB]))  # fmt: skip
        await until(lambda: "demo-server" not in text(dropin), "a removed peer goes away")
        assert "127.0.0.4" in text(dropin)

        proc = await asyncio.create_subprocess_exec(
            script("meshssh"), "down", "--state-dir", str(state),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert not dropin.exists()
    finally:
        await agent.stop()
        await policy.stop()


async def test_with_the_opt_out_the_agent_keeps_no_dropin(
    nc: NATS, nats_url: str, tmp_path: Path
) -> None:
    policy = await PolicyStandIn.start(nc, netmap=make_map(1, mesh_ip="127.0.0.3",
                                       ssh_enabled=False, remote_peers=[SERVER]))  # fmt: skip
    try:
        for n, (args, env) in enumerate(
            [(("--disable-ssh-config",), {}), ((), {"MESHSSH_DISABLE_SSH_CONFIG": "1"})]
        ):
            dropin = tmp_path / f"dropin-{n}.conf"
            dropin.write_text("# left from before\n")
            agent = await start_agent(tmp_path / "state", nats_url, *args,
                                      "--ssh-config-file", str(dropin), env=env)  # fmt: skip
            try:
                await until(dropin_gone(dropin), "the opted-out agent removes the file")
                await asyncio.sleep(0.3)  # a late write would show up here
                assert not dropin.exists()
            finally:
                assert await agent.stop() == 0
    finally:
        await policy.stop()
