"""The connection gate (SPEC §2): sources the map does not accept never see a banner, and
hostile clients leave the server serving. The relay's way in (PROXY v2 on a Unix socket) is
in test_relay_hop.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory


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
