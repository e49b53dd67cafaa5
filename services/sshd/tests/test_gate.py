"""The connection gate (SPEC §2): sources the map does not accept never see a banner, PROXY v2
only from the trusted relay (then the original source and port 22 count), and hostile
clients leave the server serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

import pytest

from meshssh_common.proxy_protocol import encode_v2

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory

RELAY_IP = "127.0.0.5"


async def connect(sshd: Sshd, bind: str) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((bind, 0))
    await asyncio.get_running_loop().sock_connect(sock, (sshd.host, sshd.port))
    return sock


async def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            while chunk := await loop.sock_recv(sock, 4096):
                data += chunk
    return data


@pytest.mark.parametrize(
    ("rules", "bind", "reason"),
    [
        ("only-other", "127.0.0.3", "no_rule"),
        ("drop", "127.0.0.3", "dropped"),
        ("open", "127.0.0.2", "self"),
    ],
)
async def test_a_valid_jwt_from_a_source_the_map_refuses_never_reaches_auth(
    rules: str,
    bind: str,
    reason: str,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    rule_sets = {
        "only-other": [mesh.rule("127.0.0.4/32")],
        "drop": [mesh.rule("127.0.0.0/8"), mesh.rule("127.0.0.3/32", action="drop")],
        "open": [mesh.rule("127.0.0.0/8")],
    }
    await mesh.publish_map(rules=rule_sets[rules])
    sshd = await sshd_factory.start()
    sock = await connect(sshd, bind)
    try:
        assert await read_all(sock) == b""  # closed without a banner
    finally:
        sock.close()
    result = await client_for(sshd, bind=bind).ssh(
        "true", token=issuer.mint("alice-id"), user=local_user
    )
    assert result.returncode == 255
    assert "Connection closed" in result.err or "Connection reset" in result.err
    assert sshd.metric("meshssh_sshd_connections_total", outcome=reason) == 2
    assert sshd.metric("meshssh_sshd_auth_attempts_total", method="password", result="accept") == 0
    event = await mesh.wait_audit(lambda e: e.kind == "connection-refused")
    assert event.reason == reason
    assert event.source_addr.startswith(f"{bind}:")


async def test_no_map_refuses_everything(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    sshd = await sshd_factory.start()
    result = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert result.returncode == 255
    assert sshd.metric("meshssh_sshd_connections_total", outcome="no_map") == 1


class Relay:
    """A minimal port-22 relay: dials sshd from the relay address, writes PROXY v2 first."""

    def __init__(self, sshd: Sshd) -> None:
        self.sshd = sshd
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, RELAY_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        up_r, up_w = await asyncio.open_connection(
            self.sshd.host, self.sshd.port, local_addr=(RELAY_IP, 0)
        )
        up_w.write(encode_v2((client[0], client[1]), (self.sshd.host, 22)))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(OSError):
                w.write_eof()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        writer.close()
        up_w.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_the_trusted_relay_passes_the_original_source_which_is_checked_on_port_22(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    openssh: Any,
) -> None:
    # The map lets 127.0.0.3 in on port 22 only (the relay's port), nobody on 22022.
    await mesh.publish_map(rules=[mesh.rule("127.0.0.3/32", port="22")])
    sshd = await sshd_factory.start(trusted_relay=(RELAY_IP,))
    relay = Relay(sshd)
    relay_port = await relay.start()
    try:
        client = client_for(sshd)
        openssh.trust(RELAY_IP, relay_port, sshd.host_key.public_line)
        via_relay = await openssh.run(
            "ssh",
            "-p",
            str(relay_port),
            f"{local_user}@{RELAY_IP}",
            "echo $SSH_CLIENT",
            options=client.options(),
            env=client.env(issuer.mint("alice-id")),
        )
        assert via_relay.returncode == 0, via_relay.err
        assert via_relay.out.startswith("127.0.0.3 ")
        assert via_relay.out.strip().endswith(" 22")
        direct = await client.ssh("true", token=issuer.mint("alice-id"), user=local_user)
        assert direct.returncode == 255  # 22022 is not open for 127.0.0.3
        other = client_for(sshd, bind="127.0.0.4")
        openssh.trust(RELAY_IP, relay_port, sshd.host_key.public_line)
        refused = await openssh.run(
            "ssh",
            "-p",
            str(relay_port),
            f"{local_user}@{RELAY_IP}",
            "true",
            options=other.options(),
            env=other.env(issuer.mint("alice-id")),
        )
        assert refused.returncode == 255  # original source 127.0.0.4 has no rule
    finally:
        await relay.close()
    accepted = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert accepted.source_addr.startswith("127.0.0.3:")
    assert sshd.metric("meshssh_sshd_connections_total", outcome="no_rule") == 2


async def test_the_relay_address_must_send_a_valid_header_and_others_cannot_send_one(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(rules=[mesh.rule("127.0.0.0/8", port="22"), mesh.rule("127.0.0.3/32")])
    sshd = await sshd_factory.start(trusted_relay=(RELAY_IP,))
    sock = await connect(sshd, RELAY_IP)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"SSH-2.0-OpenSSH_9.2\r\n")
        assert await read_all(sock) == b""
    finally:
        sock.close()
    assert sshd.metric("meshssh_sshd_connections_total", outcome="bad_proxy_header") == 1
    # A header from anyone else is not read as one: it is garbage to the SSH server, and the
    # spoofed source (127.0.0.9, which port 22 would accept) gains nothing.
    sock = await connect(sshd, "127.0.0.3")
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock, encode_v2(("127.0.0.9", 1), ("127.0.0.2", 22)) + b"SSH-2.0-x\r\n"
        )
        answer = await read_all(sock)
        assert answer.startswith(b"SSH-2.0-MeshSSH-")
    finally:
        sock.close()
    ok = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert ok.returncode == 0, ok.err


async def test_garbage_truncated_handshakes_and_200_half_open_connections_leave_it_serving(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    loop = asyncio.get_running_loop()
    garbage = await connect(sshd, "127.0.0.3")
    await loop.sock_sendall(garbage, os.urandom(4096) + b"\r\n" * 10)
    await read_all(garbage)
    garbage.close()
    truncated = await connect(sshd, "127.0.0.3")
    await loop.sock_sendall(truncated, b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x01\x0c\x05\x14")
    truncated.close()
    # From 10 other sources (20 each: under --max-startups-per-source, which would refuse
    # one source holding 200; tests/test_floods.py covers that).
    half_open = [await connect(sshd, f"127.0.0.{10 + i % 10}") for i in range(200)]
    try:
        result = await client_for(sshd).ssh(
            "echo alive", token=issuer.mint("alice-id"), user=local_user
        )
        assert result.returncode == 0, result.err
        assert result.out == "alive\n"
        assert sshd.metric("meshssh_sshd_connections_total", outcome="accepted") >= 203
    finally:
        for sock in half_open:
            sock.close()
    again = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert again.returncode == 0


async def test_a_client_that_does_not_log_in_in_time_is_dropped(
    mesh: Mesh, sshd_factory: SshdFactory
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(login_timeout=0.5)
    sock = await connect(sshd, "127.0.0.3")
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"SSH-2.0-OpenSSH_9.2\r\n")
        data = await read_all(sock, timeout=10)  # ends when the server gives up on us
        assert data.startswith(b"SSH-2.0-MeshSSH-")
    finally:
        sock.close()
    assert sshd.server.core is not None
    assert sshd.server.core.startups == 0
