"""Port forwarding with OpenSSH (SPEC §7): -L, -R (port 0 too) and -D carry data both ways
with half-close; each flag off refuses with the SPEC §9 text; low ports need root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshssh_testkit.ports import free_port

if TYPE_CHECKING:
    from conftest import Client, Issuer, Mesh, Sshd, SshdFactory


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP service that reads until EOF, then answers with the reversed bytes and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client half-closes
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, payload: bytes, *, socks_to: int | None = None) -> bytes:
    """Send ``payload``, half-close, read the answer (through SOCKS5 when ``socks_to``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if socks_to is not None:
            writer.write(b"\x05\x01\x00")
            assert await reader.readexactly(2) == b"\x05\x00"
            writer.write(
                b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", socks_to)
            )
            reply = await reader.readexactly(10)
            assert reply[1] == 0, reply
        with contextlib.suppress(OSError):  # a refused forward closes before our EOF
            writer.write(payload)
            writer.write_eof()
        async with asyncio.timeout(15):
            try:
                return await reader.read()
            except ConnectionResetError:
                return b""
    finally:
        writer.close()


async def start_ssh(client: Client, token: str, user: str, *args: str) -> Any:
    return await asyncio.create_subprocess_exec(
        *client.spawn_args(*args, user=user, opts=["-o", "ExitOnForwardFailure=yes"]),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **client.env(token)},
    )


async def wait_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return
            await asyncio.sleep(0.05)


async def stop(proc: Any) -> bytes:
    """End a long-running ``ssh -N`` and return its stderr.

    SIGTERM first; an ssh that has not exited after 10 s (seen once on a machine at load 11)
    gets SIGKILL, since what the tests read was written to stderr long before.
    """
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    reading = asyncio.ensure_future(proc.communicate())
    done, _ = await asyncio.wait({reading}, timeout=10)
    if not done:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    _, err = await asyncio.wait_for(reading, 10)
    return bytes(err)


@pytest.fixture
async def forwarding_server(mesh: Mesh, sshd_factory: SshdFactory) -> Sshd:
    await mesh.publish_map()
    return await sshd_factory.start(
        enable_ssh_local_port_forwarding=True, enable_ssh_remote_port_forwarding=True
    )


async def test_local_forwarding_carries_data_both_ways_with_half_close(
    forwarding_server: Sshd,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    echo_port: int,
    mesh: Mesh,
) -> None:
    port = free_port()
    proc = await start_ssh(
        client_for(forwarding_server),
        issuer.mint("alice-id"),
        local_user,
        "-N",
        "-L",
        f"127.0.0.1:{port}:127.0.0.1:{echo_port}",
    )
    try:
        await wait_listening(port)
        payload = os.urandom(300_000)
        assert await exchange(port, payload) == payload[::-1]
    finally:
        await stop(proc)
    opened = await mesh.wait_audit(lambda e: e.kind == "forward-open")
    assert opened.forward == f"L 127.0.0.1:{echo_port}"
    closed = await mesh.wait_audit(lambda e: e.kind == "forward-close" and e.bytes_in > 0)
    assert (closed.bytes_in, closed.bytes_out) == (300_000, 300_000)


async def test_dynamic_forwarding_works_through_socks(
    forwarding_server: Sshd, client_for: Any, issuer: Issuer, local_user: str, echo_port: int
) -> None:
    port = free_port()
    proc = await start_ssh(
        client_for(forwarding_server),
        issuer.mint("alice-id"),
        local_user,
        "-N",
        "-D",
        f"127.0.0.1:{port}",
    )
    try:
        await wait_listening(port)
        assert await exchange(port, b"through socks", socks_to=echo_port) == b"skcos hguorht"
    finally:
        await stop(proc)


async def test_remote_forwarding_on_port_0_reports_the_port_and_carries_data(
    forwarding_server: Sshd, client_for: Any, issuer: Issuer, local_user: str, echo_port: int
) -> None:
    proc = await start_ssh(
        client_for(forwarding_server),
        issuer.mint("alice-id"),
        local_user,
        "-N",
        "-R",
        f"0:127.0.0.1:{echo_port}",
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(10):
            line = (await proc.stderr.readline()).decode()
        match = re.search(r"Allocated port (\d+)", line)
        assert match is not None, line
        remote_port = int(match[1])
        assert await exchange(remote_port, b"reverse") == b"esrever"
        assert await exchange(remote_port, b"twice") == b"eciwt"
    finally:
        await stop(proc)
    async with asyncio.timeout(5):  # the listener goes away with the connection
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", remote_port)
            except OSError:
                break
            w.close()
            await asyncio.sleep(0.05)


async def test_remote_forwarding_on_a_fixed_port_listens_on_loopback_only(
    forwarding_server: Sshd, client_for: Any, issuer: Issuer, local_user: str, echo_port: int
) -> None:
    port = free_port()
    proc = await start_ssh(
        client_for(forwarding_server),
        issuer.mint("alice-id"),
        local_user,
        "-N",
        "-R",
        f"0.0.0.0:{port}:127.0.0.1:{echo_port}",
    )
    try:
        await wait_listening(port)
        assert await exchange(port, b"abc") == b"cba"
        # 0.0.0.0 was asked for; only loopback is bound (like OpenSSH's GatewayPorts no).
        table = (await asyncio.to_thread(Path("/proc/net/tcp").read_text)).splitlines()
        listening = [line for line in table if f":{port:04X} " in line and line.split()[3] == "0A"]
        assert listening
        assert all(line.split()[1].startswith("0100007F") for line in listening)
    finally:
        await stop(proc)


async def test_each_forwarding_flag_off_refuses_with_its_text(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    echo_port: int,
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    client = client_for(sshd)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("-N", "-L", f"127.0.0.1:{port}:127.0.0.1:{echo_port}", user=local_user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **client.env(issuer.mint("alice-id"))},
    )
    try:
        await wait_listening(port)
        assert await exchange(port, b"x") == b""
    finally:
        err = (await stop(proc)).decode()
    assert "Port forwarding not available" in err
    assert "--enable-ssh-local-port-forwarding" in err
    remote = await client.ssh(
        "-R",
        f"0:127.0.0.1:{echo_port}",
        "sleep 0.2; echo ran",
        token=issuer.mint("alice-id"),
        user=local_user,
    )
    assert remote.returncode == 0
    assert "Port forwarding not available" in remote.err
    assert "--enable-ssh-remote-port-forwarding" in remote.err
    # Two local attempts: the readiness probe and the exchange.
    assert sshd.metric("meshssh_sshd_forwards_total", kind="local", result="refused") == 2
    assert sshd.metric("meshssh_sshd_forwards_total", kind="remote", result="refused") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a non-root target user (root switches)")
async def test_a_port_below_1024_is_refused_for_a_non_root_user(
    forwarding_server: Sshd, client_for: Any, issuer: Issuer, local_user: str, echo_port: int
) -> None:
    result = await client_for(forwarding_server).ssh(
        "-R",
        f"127.0.0.1:1000:127.0.0.1:{echo_port}",
        "echo ran",
        token=issuer.mint("alice-id"),
        user=local_user,
    )
    assert result.returncode == 0
    assert "Cannot bind to port 1000" in result.err


async def test_permit_open_limits_local_and_dynamic_forwarding_and_audits_refusals(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    echo_port: int,
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(
        enable_ssh_local_port_forwarding=True, ssh_permit_open=(f"127.0.0.1:{echo_port}",)
    )
    client = client_for(sshd)
    other = free_port()  # nothing listens there; permit-open refuses before any connect
    allowed, refused, socks = free_port(), free_port(), free_port()
    proc = await start_ssh(
        client,
        issuer.mint("alice-id"),
        local_user,
        "-N",
        "-L",
        f"127.0.0.1:{allowed}:127.0.0.1:{echo_port}",
        "-L",
        f"127.0.0.1:{refused}:127.0.0.1:{other}",
        "-D",
        f"127.0.0.1:{socks}",
    )
    try:
        for port in (allowed, refused, socks):
            await wait_listening(port)
        assert await exchange(allowed, b"permitted") == b"dettimrep"
        assert await exchange(refused, b"x") == b""
        assert await exchange(socks, b"via socks", socks_to=echo_port) == b"skcos aiv"
        # OpenSSH closes the SOCKS connection (or replies with a failure) on the refusal.
        with pytest.raises((AssertionError, asyncio.IncompleteReadError)):
            await exchange(socks, b"x", socks_to=other)
    finally:
        err = (await stop(proc)).decode()
    assert "not allowed by this peer's --ssh-permit-open" in err
    # The readiness probe and the exchange on `refused`, and one SOCKS request.
    assert sshd.metric("meshssh_sshd_permit_open_refusals_total") == 3
    event = await mesh.wait_audit(lambda e: e.kind == "forward-refused")
    assert event.reason == "permit_open"
    assert event.forward == f"L 127.0.0.1:{other}"
    assert event.local_user == local_user
