"""The agent supervises real meshssh-sshd and meshssh-relay processes, driven by its map.

The management plane is the real meshssh-policy (testkit ``Management``: groups ``servers``
and ``users``, users reach servers on TCP 22); operators' changes go through its REST API. The
children are the real console scripts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import codec, subjects
from meshssh_common.wire import Heartbeat, SessionInfo, SessionsReport
from meshssh_common.wire.agent import SOCKET_NAME
from meshssh_testkit.management import LAPTOP_KEY, SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import AgentProcess, Status, pid_alive
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import script

MESH_IP = "127.0.0.2"


@pytest.fixture
async def policy(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, services: ServiceFactory
) -> Management:
    return await Management.start(services, nats_server, nc, tmp_path / "policy")


async def start_agent(
    tmp_path: Path,
    nats_url: str,
    policy: Management,
    *flags: str,
    key: str = SERVER_KEY,
    name: str = "server",
    mesh_ip: str = MESH_IP,
) -> AgentProcess:
    return await AgentProcess.start(
        tmp_path / "state",
        "--mesh-ip",
        mesh_ip,
        "--name",
        name,
        "--nats-url",
        nats_url,
        "--management-url",
        policy.api,
        "--setup-key",
        key,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--sshd-bin",
        script("meshssh-sshd"),
        *flags,
    )


def running(*names: str) -> Callable[[Status], bool]:
    def check(s: Status) -> bool:
        states = {c["name"]: c["state"] for c in s["children"]}
        return all(states[name] == "running" for name in names)

    return check


async def wait_gone(pid: int, timeout: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while pid_alive(pid):
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_sshd_runs_only_with_both_switches_and_stops_within_2s_of_disable(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    agent = await start_agent(tmp_path, nats_url, policy, "--allow-server-ssh")
    try:
        status = await agent.wait_status(running("sshd"))
        status = await agent.wait_status(running("relay"))
        sshd_pid = agent.child(status, "sshd")["pid"]
        assert pid_alive(sshd_pid)
        assert status["ssh_running"]
        assert status["relay_mode"] == "proxy"
        # A user's peer sees it in its map with the ports the agent resolved (port 0: picked),
        # which is how its drop-in knows a MeshSSH server there (peers hear no heartbeats).
        laptop = await policy.register("laptop", "127.0.0.3")
        remote = {p.name: p for p in laptop.netmap.remote_peers}["server"]
        assert remote.ssh_enabled
        assert (remote.ssh_port, remote.relay_port) == (status["ssh_port"], status["relay_port"])
        first = status["serial"]

        # The operator's switch (meshctl peers ssh disable): off in a new map.
        disabled_at = time.monotonic()
        await policy.patch_peer("server", ssh_enabled=False)
        async with asyncio.timeout(10):
            while pid_alive(sshd_pid):
                await asyncio.sleep(0.02)
        assert time.monotonic() - disabled_at < 2.0
        status = await agent.wait_status(
            lambda s: s["serial"] > first and agent.child(s, "relay")["state"] == "stopped"
        )  # no native upstream: the relay has nothing to do either
        assert agent.child(status, "sshd")["state"] == "stopped"

        # Back on: a fresh sshd.
        await policy.patch_peer("server", ssh_enabled=True)
        status = await agent.wait_status(running("sshd"))
        assert agent.child(status, "sshd")["pid"] != sshd_pid
    finally:
        assert await agent.stop() == 0


async def test_without_allow_server_ssh_the_management_switch_alone_starts_nothing(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    agent = await start_agent(tmp_path, nats_url, policy)
    try:
        status = await agent.wait_status(lambda s: s["registered"] and s["serial"] > 0)
        peer = await policy.peer("server")
        assert peer["ssh_enabled"]  # the operator's switch says yes...
        assert agent.child(status, "sshd")["state"] == "stopped"  # ...the local flag says no
        assert agent.child(status, "relay")["state"] == "stopped"
        assert peer["capabilities"] == ["native_ssh"]
        assert not peer["flags"]["server_ssh_allowed"]
        assert status["ssh_enabled"]  # and so does its map: the local flag alone keeps it off
    finally:
        await agent.stop()


async def test_a_killed_child_is_restarted_and_a_killed_agent_takes_its_children_along(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    agent = await start_agent(tmp_path, nats_url, policy, "--allow-server-ssh")
    try:
        status = await agent.wait_status(running("sshd", "relay"))
        relay_pid = agent.child(status, "relay")["pid"]
        os.kill(relay_pid, signal.SIGKILL)
        status = await agent.wait_status(
            lambda s: running("relay")(s) and agent.child(s, "relay")["pid"] != relay_pid
        )
        assert agent.child(status, "relay")["restarts"] == 1
        assert agent.child(status, "relay")["last_exit"] == -signal.SIGKILL

        # The agent itself is SIGKILLed: its children get SIGTERM from the kernel and go.
        pids = [agent.child(status, name)["pid"] for name in ("sshd", "relay")]
        agent.proc.kill()
        for pid in pids:
            await wait_gone(pid, timeout=15)
    finally:
        await agent.stop()


async def test_down_stops_everything_and_leaves_no_process(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    agent = await start_agent(tmp_path, nats_url, policy, "--allow-server-ssh")
    try:
        status = await agent.wait_status(running("sshd", "relay"))
        pids = [agent.child(status, name)["pid"] for name in ("sshd", "relay")]
        down = await asyncio.create_subprocess_exec(
            script("meshssh"),
            "down",
            "--state-dir",
            str(tmp_path / "state"),
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, err = await down.communicate()
        assert down.returncode == 0, err
        assert b"agent stopped" in err
        async with asyncio.timeout(10):
            assert await agent.proc.wait() == 0
        for pid in pids:
            assert not pid_alive(pid)
        assert not (tmp_path / "state" / SOCKET_NAME).exists()
    finally:
        await agent.stop()


async def test_heartbeats_carry_ssh_state_and_sessions_and_status_shows_the_maps_peers(
    tmp_path: Path, nats_url: str, nc: NATS, policy: Management
) -> None:
    # The agent is a user's peer that may also serve SSH; its map's remote peers are the two
    # servers (users reach servers).
    await policy.register("server", "127.0.0.4", key=SERVER_KEY, ssh_port=22022)
    await policy.register("idle", "127.0.0.5", key=SERVER_KEY)
    beats: asyncio.Queue[Heartbeat] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        beat = codec.decode(msg.data, Heartbeat)
        if beat.peer_mesh_ip == "127.0.0.3":
            await beats.put(beat)

    sub = await nc.subscribe(subjects.HEARTBEAT_ALL, cb=on_beat)
    agent = await start_agent(
        tmp_path,
        nats_url,
        policy,
        "--allow-server-ssh",
        key=LAPTOP_KEY,
        name="laptop",
        mesh_ip="127.0.0.3",
    )
    try:
        await agent.wait_status(lambda s: s["registered"])
        await policy.patch_peer("laptop", ssh_enabled=True)
        status = await agent.wait_status(running("sshd"))
        peer_id = status["peer_id"]
        async with asyncio.timeout(10):
            while not (beat := await beats.get()).ssh_running:
                pass
        assert beat.relay_mode in ("proxy", "off")
        assert beat.peer_id == peer_id
        session = SessionInfo(
            session_id="s1",
            local_user="alice",
            jwt_user="alice@example.com",
            source="127.0.0.3:51000",
            command="bash",
            started_at=time.time(),
        )
        report = SessionsReport(peer_id=peer_id, sent_at=time.time(), sessions=(session,))
        await nc.publish(subjects.sshd_sessions(peer_id), codec.encode(report))
        status = await agent.wait_status(lambda s: bool(s["sessions"]))
        assert status["sessions"][0]["jwt_user"] == "alice@example.com"
        # Remote peers as the map says: SSH state; whether they are up, nobody here can say.
        peers = {p["name"]: p for p in status["peers"]}
        assert peers["server"]["ssh_enabled"]
        assert {p["online"] for p in peers.values()} == {None}
        async with asyncio.timeout(10):
            while not (beat := await beats.get()).sessions:
                pass
        assert beat.sessions[0].session_id == "s1"
    finally:
        await sub.unsubscribe()
        await agent.stop()


async def test_after_nats_restarts_a_disable_still_stops_sshd_promptly(
    tmp_path: Path, nats_server: NatsServer, policy: Management, nc: NATS
) -> None:
    agent = await start_agent(tmp_path, nats_server.url, policy, "--allow-server-ssh")
    try:
        status = await agent.wait_status(running("sshd", "relay"))
        sshd_pid = agent.child(status, "sshd")["pid"]
        await nats_server.restart()
        async with asyncio.timeout(15):
            while "nats reconnected" not in agent.output() or not nc.is_connected:
                await asyncio.sleep(0.05)
        await policy.process.wait_ready(timeout=15)  # policy is back on the bus too
        await policy.patch_peer("server", ssh_enabled=False)
        # Without restarting its watch after the reconnect, the agent heard of it ~18 s later.
        await wait_gone(sshd_pid, timeout=8)
    finally:
        await agent.stop()


def free_port_on(*hosts: str) -> int:
    """A port the OS picked on the first host that is free on every other one too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no common free port")


async def test_two_agents_on_one_machine_share_ports_on_their_own_addresses(
    tmp_path: Path, nats_url: str, policy: Management
) -> None:
    ssh_port = free_port_on(MESH_IP, "127.0.0.3")
    relay_port = free_port_on(MESH_IP, "127.0.0.3")
    agents = []
    for name, ip in (("p1", MESH_IP), ("p2", "127.0.0.3")):
        agent = await AgentProcess.start(
            tmp_path / name,
            "--mesh-ip",
            ip,
            "--name",
            name,
            "--nats-url",
            nats_url,
            "--management-url",
            policy.api,
            "--setup-key",
            SERVER_KEY,
            "--ssh-port",
            str(ssh_port),
            "--relay-port",
            str(relay_port),
            "--relay-mode",
            "proxy",
            "--allow-server-ssh",
            "--sshd-bin",
            script("meshssh-sshd"),
        )
        agents.append(agent)
    try:
        statuses = [await a.wait_status(running("sshd", "relay")) for a in agents]
        assert [s["name"] for s in statuses] == ["p1", "p2"]
        assert len({s["peer_id"] for s in statuses}) == 2
        assert {s["relay_port"] for s in statuses} == {relay_port}
        assert all(
            a.child(s, "relay")["restarts"] == 0 for a, s in zip(agents, statuses, strict=True)
        )
        assert (tmp_path / "p1" / SOCKET_NAME).exists()
        assert (tmp_path / "p2" / SOCKET_NAME).exists()
    finally:
        for agent in agents:
            await agent.stop()
