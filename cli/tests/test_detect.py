"""``ssh detect`` classifies by the banner alone, JWT or not, and gives up within 5 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncssh
import pytest

from meshssh_cli.ssh.detect import BannerKind, classify, probe


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("SSH-2.0-MeshSSH-0.1.0 MeshSSH-JWT-Required", BannerKind.MESHSSH_JWT),
        ("SSH-2.0-MeshSSH-0.1.0", BannerKind.MESHSSH_NO_AUTH),
        ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6", BannerKind.OTHER_SSH),
        ("SSH-2.0-OpenSSH_9.2 MeshSSH-JWT-Required", BannerKind.OTHER_SSH),
        ("SSH-2.0-NotMeshSSH-1", BannerKind.OTHER_SSH),
        ("HTTP/1.1 400 Bad Request", BannerKind.NOT_SSH),
    ],
)
def test_banners_are_classified_by_the_identification_line(line: str, kind: BannerKind) -> None:
    assert classify(line) is kind


Server = Callable[[str], Awaitable[int]]


@pytest.fixture
async def ssh_server() -> AsyncIterator[Server]:
    """Start real asyncssh servers with a chosen identification string."""
    servers: list[asyncssh.SSHAcceptor] = []
    key = asyncssh.generate_private_key("ssh-ed25519")

    async def start(version: str) -> int:
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[key], server_version=version
        )
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("version", "kind"),
    [
        ("MeshSSH-0.1.0 MeshSSH-JWT-Required", BannerKind.MESHSSH_JWT),
        ("MeshSSH-0.1.0", BannerKind.MESHSSH_NO_AUTH),
        ("OpenSSH_9.2p1", BannerKind.OTHER_SSH),
    ],
)
async def test_a_real_server_is_probed(ssh_server: Server, version: str, kind: BannerKind) -> None:
    port = await ssh_server(version)
    detection = await probe("127.0.0.1", port, source="127.0.0.1")
    assert detection.kind is kind
    assert detection.is_meshssh == kind.name.startswith("MESHSSH")


async def test_a_closed_port_a_non_ssh_and_a_silent_server_are_not_meshssh() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # says nothing; closed at the end of the test

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    web = await asyncio.start_server(http, "127.0.0.1", 0)
    closed = await asyncio.start_server(http, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        started = time.monotonic()
        assert (
            await probe("127.0.0.1", quiet.sockets[0].getsockname()[1], timeout=0.5)
        ).kind is BannerKind.UNREACHABLE
        assert time.monotonic() - started < 3
        assert (
            await probe("127.0.0.1", web.sockets[0].getsockname()[1])
        ).kind is BannerKind.NOT_SSH
        assert (await probe("127.0.0.1", closed_port)).kind is BannerKind.UNREACHABLE
    finally:
        for w in held:
            w.close()
        for s in (quiet, web):
            s.close()
        await asyncio.gather(quiet.wait_closed(), web.wait_closed(), return_exceptions=True)
