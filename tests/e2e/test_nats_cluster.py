"""The whole system on a 3-node NATS cluster (JetStream R3): one node dies, then all restart.

Real processes only: :func:`~meshssh_testkit.whole_system.whole_system` on a
:class:`NatsCluster` (routes, R3, JWT auth): ``meshssh-authn`` (embedded provider, alice),
``meshssh-policy`` (demo seed), and two agents: ``demo-server`` (sshd and relay in proxy
mode) and ``demo-laptop`` (its OpenSSH drop-in). Every process is given all three URLs;
services create every bucket and stream with three replicas (``--nats-replicas 3``).

- One node is SIGKILLed (the one that holds policy's watch of the peers bucket, the watch a
  peer change waits for) while three SSH sessions echo lines and management writes and new
  logins go on: no session drops, every write the API accepted is there afterwards, every
  audit event sshd recorded is in the stream, and the maps converge within 5 s: a change made
  at the kill reaches the laptop within 5 s of JetStream answering again (nats-server's raft
  elects new leaders 4 to 9 s after a death: nothing can be written before), and a change
  made after the elections within 5 s of the API call.
- Every node is restarted: peers, groups, policies, maps and audit events are all intact, and
  SSH works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.wire import AuditEvent
from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.openssh import openssh_available
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.process import run_command
from meshssh_testkit.scrape import read_metric
from meshssh_testkit.whole_system import USER, System, audit_events, sign_in, whole_system

CONVERGE_S = 5.0  # issue 19: maps converge within 5 s
SERVER = "demo-server"
STREAMS = (f"KV_{subjects.BUCKET_PEERS}", f"KV_{subjects.BUCKET_NETMAPS}", subjects.AUDIT_STREAM)


@pytest.fixture
async def system(
    nats_cluster: NatsCluster, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[System]:
    need_tool(openssh_available(), "OpenSSH (ssh)")
    async with whole_system(nats_cluster, services, tmp_path) as running:
        yield running


def ssh(system: System, *args: str) -> list[str]:
    """``ssh`` to demo-server through the laptop's drop-in."""
    return system.tool("ssh", f"{USER}@{SERVER}", *args)


class Session:
    """A live ``ssh`` session that echoes each line it is sent."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.sent = 0

    @classmethod
    async def open(cls, system: System) -> Session:
        proc = await asyncio.create_subprocess_exec(
            *ssh(system, "while read l; do echo got-$l; done"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        session = cls(proc)
        await session.echo()
        return session

    async def echo(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.sent += 1
        self.proc.stdin.write(f"{self.sent}\n".encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(20):
            line = await self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"session ended: {(await self.proc.stderr.read()).decode()}")
        assert line.strip() == f"got-{self.sent}".encode(), (line, self.sent)

    async def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        async with asyncio.timeout(20):
            await self.proc.communicate()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


async def stream_leader(nc: NATS, stream: str) -> str:
    """The node (n0, n1, n2) that leads ``stream``; the stream must have three replicas."""
    info = await nc.jetstream().stream_info(stream)
    assert info.cluster is not None, info
    assert info.cluster.leader, info
    assert info.config.num_replicas == 3, info.config
    return info.cluster.leader


async def peers_watch_node(nc: NATS) -> str:
    """The node holding policy's watch of ``peer.*`` (its ordered consumer, R1)."""
    stream = f"KV_{subjects.BUCKET_PEERS}"
    nodes: list[str] = []
    async with asyncio.timeout(10):
        while len(nodes) != 1:  # exactly one such watch, once placed on a node
            consumers = await nc.jetstream()._jsm.consumers_info(stream)
            nodes = [
                c.cluster.leader
                for c in consumers
                if (c.config.filter_subject or "").endswith(".peer.*")
                and c.cluster is not None
                and c.cluster.leader
            ]
            await asyncio.sleep(0 if len(nodes) == 1 else 0.1)
    return nodes[0]


async def js_answers(cluster: NatsCluster, nc: NATS, timeout: float = 30) -> None:
    """Until JetStream answers: a meta leader, and a leader for the streams a change needs."""
    await cluster.wait_jetstream(timeout)
    async with asyncio.timeout(timeout):
        for stream in STREAMS:
            while True:
                try:
                    await stream_leader(nc, stream)
                    break
                except (nats.errors.Error, TimeoutError, AssertionError):
                    await asyncio.sleep(0.1)


async def sshd_audit_counts(system: System) -> dict[str, float]:
    """sshd's own count of audit events by result (published, retried, failed, dropped)."""
    counts = {}
    for result in ("published", "retried", "failed", "dropped"):
        sample = f'meshssh_sshd_audit_events_total{{result="{result}"}}'
        counts[result] = await read_metric(f"http://{system.sshd_ops[SERVER]}", sample) or 0.0
    return counts


async def wait_published(system: System, nc: NATS) -> list[AuditEvent]:
    """Until sshd's queue is empty: its events in the stream equal its published count."""
    last: tuple[int, dict[str, float]] = (0, {})
    try:
        async with asyncio.timeout(30):
            while True:
                counts = await sshd_audit_counts(system)
                events = await audit_events(nc)
                last = (len([e for e in events if e.kind != "admin-change"]), counts)
                if last[0] == counts["published"]:
                    return events
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"sshd events in the stream, sshd's counts: {last}") from None


async def change_laptop(system: System, ssh_enabled: bool) -> tuple[float, float]:
    """Flip the laptop's SSH switch; (when asked, when its agent applied the new map)."""
    before = await system.laptop.status()
    asked = time.monotonic()
    r = await system.call("PATCH", f"/peers/{before['peer_id']}", {"ssh_enabled": ssh_enabled})
    assert r.status_code == 200, r.text
    await system.laptop.wait_status(lambda s: s["serial"] > before["serial"], timeout=30)
    return asked, time.monotonic()


async def test_a_node_killed_mid_session_loses_no_session_write_or_audit_event(
    system: System, nats_cluster: NatsCluster
) -> None:
    nc = await nats_cluster.connect()
    sessions: list[Session] = []
    try:
        await sign_in(system)
        sessions = [await Session.open(system) for _ in range(3)]
        victim = await peers_watch_node(nc)
        held = [s for s in STREAMS if await stream_leader(nc, s) == victim]

        async def writes() -> list[str]:
            made = []
            for i in range(20):  # one management write every 0.25 s through the outage
                r = await system.call("POST", "/groups", {"id": f"kill-{i}", "name": f"k{i}"})
                assert r.status_code == 201, (i, r.status_code, r.text)
                made.append(f"kill-{i}")
                await asyncio.sleep(0.25)
            return made

        async def logins() -> int:
            ok = 0
            for _ in range(5):  # new sessions (and their audit events) during the outage
                result = await run_command(*ssh(system, "id -un"))
                assert (result.returncode, result.out.strip()) == (0, USER), result.err
                ok += 1
                await asyncio.sleep(0.5)
            return ok

        async def chatter() -> None:
            for _ in range(30):
                for session in sessions:
                    await session.echo()
                await asyncio.sleep(0.2)

        async def answering() -> float:
            await js_answers(nats_cluster, nc)
            return time.monotonic()

        await nats_cluster.kill(int(victim.removeprefix("n")))
        killed = time.monotonic()
        made, ok, _, (asked, applied), recovered = await asyncio.gather(
            writes(), logins(), chatter(), change_laptop(system, True), answering()
        )
        assert ok == 5
        # A change made at the kill: within 5 s of JetStream answering again (or of the call).
        early = applied - max(asked, recovered)
        # A change made after the elections: within 5 s of the API call.
        asked_late, applied_late = await change_laptop(system, False)
        late = applied_late - asked_late
        # policy's own connection went too (it then restarts its watches on reconnect), or
        # only its watch's consumer did (the case nothing but the heartbeats can reveal)
        policy_node = "policy's node" if "nats disconnected" in system.policy.output() else ""
        print(
            f"killed {victim} (held policy's peer watch, {held} {policy_node}); JetStream "
            f"answered "
            f"{recovered - killed:.2f}s later; a change at the kill applied "
            f"{applied - killed:.2f}s after it ({early:.2f}s after JetStream answered); "
            f"a change {asked_late - killed:.2f}s after it applied in {late:.2f}s"
        )
        assert early <= CONVERGE_S, (early, recovered - killed, applied - killed)
        assert late <= CONVERGE_S, late

        for session in sessions:  # every session lived through it
            await session.echo()
        groups = {g["id"] for g in (await system.call("GET", "/groups")).json()}
        assert set(made) <= groups, set(made) - groups
        for session in sessions:
            assert await session.close() == 0

        events = await wait_published(system, nc)
        counts = await sshd_audit_counts(system)
        assert counts.get("failed", 0) == 0, counts
        assert counts.get("dropped", 0) == 0, counts
        accepted_logins = [e for e in events if e.kind == "auth-accepted"]
        assert len(accepted_logins) >= 3 + 5, [e.kind for e in events]
        admin = [e for e in events if e.action == "POST /api/v1/groups"]
        assert sorted(json.loads(e.detail)["id"] for e in admin) == sorted(made), admin
        print(f"audit: sshd {counts}, policy {len(admin)} admin events")
        await nats_cluster.revive(int(victim.removeprefix("n")))
        assert len(await audit_events(nc)) == len(events)
    finally:
        for session in sessions:
            session.kill()
        await nc.close()


async def test_every_node_restarted_keeps_all_state(
    system: System, nats_cluster: NatsCluster
) -> None:
    await sign_in(system)
    result = await run_command(*ssh(system, "id -un"))
    assert result.returncode == 0, result.err
    nc = await nats_cluster.connect()
    try:
        for i in range(5):
            r = await system.call("POST", "/groups", {"id": f"keep-{i}", "name": f"k{i}"})
            assert r.status_code == 201, r.text
        events_before = await wait_published(system, nc)
        peers_before = sorted(p["id"] for p in (await system.call("GET", "/peers")).json())
        groups_before = (await system.call("GET", "/groups")).json()
        policies_before = (await system.call("GET", "/policies")).json()
        maps = await nc.jetstream().key_value(subjects.BUCKET_NETMAPS)
        maps_before = {k: (await maps.get(k)).revision for k in await maps.keys()}
        serial = (await system.laptop.status())["serial"]
    finally:
        await nc.close()

    await nats_cluster.restart()

    nc = await nats_cluster.connect()
    try:
        await js_answers(nats_cluster, nc)
        for agent in (system.server, system.laptop):
            await agent.wait_status(lambda s: s["nats_connected"], timeout=20)
        async with asyncio.timeout(20):  # until policy is back and answers from its state
            while (await system.call("GET", "/groups")).status_code != 200:
                await asyncio.sleep(0.2)
        assert sorted(p["id"] for p in (await system.call("GET", "/peers")).json()) == (
            peers_before
        )
        assert (await system.call("GET", "/groups")).json() == groups_before
        assert (await system.call("GET", "/policies")).json() == policies_before
        maps = await nc.jetstream().key_value(subjects.BUCKET_NETMAPS)
        for key, revision in maps_before.items():  # every map there, none rewritten backwards
            assert (await maps.get(key)).revision >= revision, key
        assert (await system.laptop.status())["serial"] >= serial
        assert [e.at for e in (await audit_events(nc))[: len(events_before)]] == [
            e.at for e in events_before
        ]
        result = await run_command(*ssh(system, "id -un"))
        assert (result.returncode, result.out.strip()) == (0, USER), result.err
    finally:
        await nc.close()
