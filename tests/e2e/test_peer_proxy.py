"""A peer on the loopback mesh with the userspace relay: OpenSSH → relay (port 22's stand-in)
→ meshssh-sshd, all started by ``meshssh up``.

The management plane is the real meshssh-policy (``Management``): the peer registers with the
server key, the client's address 127.0.0.3 is a registered laptop (so the policy's rule admits
it), 127.0.0.4 never registered. sshd runs with ``--disable-ssh-auth`` (machine identity), so
the network ACL alone decides who gets in.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import codec, subjects
from meshssh_common.host_keys import load_or_create_host_key
from meshssh_common.proxy_protocol import encode_v2
from meshssh_common.wire import AuditEvent
from meshssh_testkit.management import SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.openssh import OpenSSH
from meshssh_testkit.peer_agent import AgentProcess, Status
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.process import script
from meshssh_testkit.ssh_upstreams import NativeSshd, sshd_binary

USER = getpass.getuser()
MESH_IP, CLIENT_IP = "127.0.0.2", "127.0.0.3"


@dataclass
class Peer:
    agent: AgentProcess
    policy: Management
    status: Status
    audit: list[AuditEvent]
    native: NativeSshd
    state_dir: Path


@pytest.fixture
async def peer(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, openssh: OpenSSH, services: ServiceFactory
) -> AsyncIterator[Peer]:
    need_tool(sshd_binary() is not None, "OpenSSH's sshd (openssh-server)")
    need_tool(USER == "root", "root (sshd -i as the native daemon, login as the current user)")
    audit: list[AuditEvent] = []

    async def on_audit(msg: Msg) -> None:
        audit.append(codec.decode(msg.data, AuditEvent))

    sub = await nc.subscribe(subjects.AUDIT_SUBJECTS, cb=on_audit)
    native = NativeSshd(tmp_path / "native", MESH_IP, client_key=openssh.public_key)
    await native.start()
    policy = await Management.start(services, nats_server, nc, tmp_path)
    await policy.register("laptop", CLIENT_IP)
    agent = await AgentProcess.start(
        tmp_path / "state",
        "--mesh-ip",
        MESH_IP,
        "--name",
        "server",
        *nats_server.flags(),
        "--management-url",
        policy.api,
        "--setup-key",
        SERVER_KEY,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--allow-server-ssh",
        "--disable-ssh-auth",
        "--enable-ssh-root",
        "--native-upstream",
        f"{MESH_IP}:{native.port}",
        "--sshd-bin",
        script("meshssh-sshd"),
    )
    try:
        status = await agent.wait_status(lambda s: s["ssh_running"] and s["relay_running"])
        host_key = load_or_create_host_key(tmp_path / "state" / "ssh_host_ed25519_key")
        openssh.trust(MESH_IP, status["relay_port"], host_key.public_line)
        openssh.trust(MESH_IP, status["ssh_port"], host_key.public_line)
        yield Peer(agent, policy, status, audit, native, tmp_path / "state")
    finally:
        await agent.stop()
        await native.stop()
        await sub.unsubscribe()


async def ssh(
    openssh: OpenSSH, port: int, command: str, source: str = CLIENT_IP
) -> tuple[int, str, str]:
    result = await openssh.ssh("-b", source, "-p", str(port), f"{USER}@{MESH_IP}", command)
    return result.returncode, result.out.strip(), result.err


async def test_openssh_reaches_sshd_through_the_relay_and_sshd_audits_the_original_source(
    peer: Peer, openssh: OpenSSH
) -> None:
    code, out, err = await ssh(openssh, peer.status["relay_port"], "echo $SSH_CLIENT")
    assert code == 0, err
    assert out.split()[0] == CLIENT_IP  # not the relay's address
    async with asyncio.timeout(10):
        while not any(e.kind == "session-start" for e in peer.audit):
            await asyncio.sleep(0.05)
    started = next(e for e in peer.audit if e.kind == "session-start")
    assert started.source_addr.startswith(f"{CLIENT_IP}:")
    accepted = next(e for e in peer.audit if e.kind == "auth-accepted")
    assert accepted.source_addr.startswith(f"{CLIENT_IP}:")
    # A source without a rule never gets past the relay.
    code, _, _ = await ssh(openssh, peer.status["relay_port"], "true", source="127.0.0.4")
    assert code == 255
    assert not any(e.source_addr.startswith("127.0.0.4:") for e in peer.audit)


async def test_a_proxy_header_from_an_untrusted_address_is_refused_by_sshd(peer: Peer) -> None:
    # On TCP 22022 sshd never reads a PROXY header, from a client (127.0.0.3 may reach 22022
    # directly) or from the mesh address itself (where the relay used to dial from): the relay
    # reaches sshd only on its Unix socket, which checks the caller's uid.
    loop = asyncio.get_running_loop()
    for source in (CLIENT_IP, MESH_IP):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (MESH_IP, peer.status["ssh_port"]))
        forged = encode_v2(("127.0.0.9", 4242), (MESH_IP, 22))
        received = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused at once
            await loop.sock_sendall(sock, forged + b"SSH-2.0-OpenSSH_9.2p1\r\n")
            async with asyncio.timeout(15):
                while chunk := await loop.sock_recv(sock, 4096):
                    received += chunk
        sock.close()
        assert received.count(b"\n") <= 1  # at most the banner: no key exchange ever happened
    await asyncio.sleep(0.5)  # audit events are published asynchronously
    assert not any("127.0.0.9" in e.source_addr for e in peer.audit)
    assert not any(e.kind in ("auth-accepted", "session-start") for e in peer.audit)
    relay_socket = peer.state_dir / "sshd" / "relay.sock"
    assert stat.S_IMODE(relay_socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(relay_socket.parent.stat().st_mode) == 0o700


async def test_with_ssh_disabled_for_the_peer_connections_go_to_the_native_sshd(
    peer: Peer, openssh: OpenSSH
) -> None:
    serial = peer.status["serial"]
    await peer.policy.patch_peer("server", ssh_enabled=False)
    status = await peer.agent.wait_status(
        lambda s: (
            s["serial"] > serial
            and peer.agent.child(s, "sshd")["state"] == "stopped"
            and s["relay_running"]
        )
    )
    port = status["relay_port"]
    with openssh.known_hosts.open("a") as f:  # the same port now answers with another key
        f.write(f"[{MESH_IP}]:{port} {peer.native.public_line}\n")
    code, out, err = await ssh(openssh, port, "echo native $((6*7))")
    assert code == 0, err
    assert out == "native 42"
    assert peer.native.accepted == 1
