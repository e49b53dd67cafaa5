"""Pre-auth abuse (SPEC §7, limits): garbage and wrong protocols penalize their source, which
the gate then refuses before the banner; one source cannot hold every startup slot."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory


async def _open(sshd: Sshd, source: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    async with asyncio.timeout(5):
        await loop.sock_connect(sock, (sshd.host, sshd.port))
    return sock


async def _first_line(sock: socket.socket) -> bytes:
    """What the server sends first ("" when it closed without a banner)."""
    loop = asyncio.get_running_loop()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(5):
            while b"\n" not in data:
                chunk = await loop.sock_recv(sock, 256)
                if not chunk:
                    break
                data += chunk
    return data


async def _garbage(sshd: Sshd, source: str) -> bytes:
    loop = asyncio.get_running_loop()
    sock = await _open(sshd, source)
    try:
        await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\n\r\n")
        first = await _first_line(sock)
        with contextlib.suppress(OSError):
            async with asyncio.timeout(5):
                while await loop.sock_recv(sock, 4096):  # until the server hangs up
                    pass
        return first
    finally:
        sock.close()


async def _wait_metric(sshd: Sshd, name: str, value: float, **labels: str) -> None:
    async with asyncio.timeout(5):
        while sshd.metric(name, **labels) < value:
            await asyncio.sleep(0.02)


async def test_garbage_penalizes_its_source_until_the_gate_refuses_it(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(auth_failure_limit=3)
    for _ in range(3):
        assert (await _garbage(sshd, "127.0.0.5")).startswith(b"SSH-2.0-MeshSSH")
    name = "meshssh_sshd_preauth_failures_total"
    await _wait_metric(sshd, name, 3, reason="ProtocolNotSupported")
    assert await _garbage(sshd, "127.0.0.5") == b""  # refused at the gate: no banner
    assert sshd.metric("meshssh_sshd_connections_total", outcome="rate_limited") == 1
    # Other sources are not affected.
    ok = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert ok.returncode == 0, ok.err


async def test_a_banner_probe_that_closes_cleanly_is_not_penalized(
    mesh: Mesh, sshd_factory: SshdFactory
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(auth_failure_limit=2)
    for _ in range(4):  # as `meshssh ssh detect` does: read the banner, close
        sock = await _open(sshd, "127.0.0.5")
        try:
            assert (await _first_line(sock)).startswith(b"SSH-2.0-MeshSSH")
        finally:
            sock.close()
    await asyncio.sleep(0.2)
    assert sshd.metric("meshssh_sshd_connections_total", outcome="rate_limited") == 0


async def test_one_source_cannot_hold_every_startup_slot(
    mesh: Mesh, sshd_factory: SshdFactory
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(max_startups_per_source=2)
    held = [await _open(sshd, "127.0.0.6") for _ in range(2)]
    try:
        for sock in held:
            assert (await _first_line(sock)).startswith(b"SSH-2.0-")
        third = await _open(sshd, "127.0.0.6")
        other = await _open(sshd, "127.0.0.7")
        try:
            assert await _first_line(third) == b""
            assert (await _first_line(other)).startswith(b"SSH-2.0-")
        finally:
            third.close()
            other.close()
    finally:
        for sock in held:
            sock.close()
    outcome = "too_many_startups_from_source"
    assert sshd.metric("meshssh_sshd_connections_total", outcome=outcome) == 1
