"""Audit events (SPEC §8) in the real ``MESHSSH_AUDIT`` stream: every auth, session, forward
and SFTP event names the source peer (id and name from the map, its address), the JWT user id
and the local user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshssh_common.wire import AuditEvent, SourcePeer

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, SshdFactory

LAPTOP = SourcePeer(id="laptop-1", name="laptop", mesh_ip="127.0.0.3")


@pytest.fixture
async def reverse_port() -> AsyncIterator[int]:
    """A TCP service that answers what it read, reversed, once the client half-closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.read())[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_auth_session_forward_and_sftp_events_carry_the_source_peer_and_both_users(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    reverse_port: int,
    tmp_path: Path,
) -> None:
    await mesh.publish_map(grants=[("alice-id", "*")], source_peers=[LAPTOP])
    sshd = await sshd_factory.start(enable_ssh_sftp=True, enable_ssh_local_port_forwarding=True)
    client = client_for(sshd)
    token = issuer.mint("alice-id")
    assert (await client.ssh("true", token=token, user=local_user)).returncode == 0
    refused = await client.ssh("true", token=issuer.mint("mallory-id"), user=local_user)
    assert refused.returncode == 255
    forwarded = await client.ssh(
        token=token, user=local_user, opts=["-W", f"127.0.0.1:{reverse_port}"], input=b"ping"
    )
    assert forwarded.out == "gnip", forwarded.err
    batch = tmp_path / "batch"
    batch.write_text("pwd\n")
    sftp = await client.tool("sftp", "-b", str(batch), f"{local_user}@{sshd.host}", token=token)
    assert sftp.returncode == 0, sftp.err

    kinds = (
        "auth-accepted",
        "auth-rejected",
        "session-start",
        "session-end",
        "forward-open",
        "forward-close",
        "sftp-start",
        "sftp-end",
    )
    events: list[AuditEvent] = []
    async with asyncio.timeout(10):
        while not all(any(e.kind == k for e in events) for k in kinds):
            events = await mesh.audit_events()
            await asyncio.sleep(0.1)
    for event in events:
        if event.kind not in kinds:
            continue
        assert (event.source_peer, event.source_peer_name) == ("laptop-1", "laptop"), event
        assert event.source_addr.startswith("127.0.0.3:"), event
        assert event.local_user == local_user, event
        expected = "mallory-id" if event.kind == "auth-rejected" else "alice-id"
        assert event.jwt_user == expected, event


async def test_a_source_the_map_does_not_name_has_only_its_address(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(source_peers=[SourcePeer(id="other", name="other", mesh_ip="127.0.0.9")])
    sshd = await sshd_factory.start()
    result = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert result.returncode == 0, result.err
    event = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert (event.source_peer, event.source_peer_name) == ("", "")
    assert event.source_addr.startswith("127.0.0.3:")
