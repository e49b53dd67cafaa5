"""The userspace relay in-process: ACL at the door, PROXY header, early bytes, half-close,
back-pressure. sshd's side is a real Unix socket (its relay socket), the native upstream a real
TCP server on loopback; no NATS (the map is set directly)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.peer_map import PeerMap
from meshssh_common.proxy_protocol import SIGNATURE, parse_v2
from meshssh_relay.proxy import ProxyRelay, RelayMetrics
from meshssh_relay.pump import CHUNK
from meshssh_relay.settings import RelaySettings
from meshssh_testkit.netmaps import make_map

RELAY_IP, CLIENT_IP, STRANGER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"


class Relay:
    def __init__(self, relay: ProxyRelay, holder: PeerMap, metrics: ServiceMetrics) -> None:
        self.relay, self.holder, self.metrics = relay, holder, metrics

    @property
    def port(self) -> int:
        return self.relay.address[1]

    def count(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "meshssh_relay_connections_total", {"result": result}
        )
        return value or 0.0

    async def connect(
        self, source: str = CLIENT_IP
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(RELAY_IP, self.port, local_addr=(source, 0))


async def start_relay(**settings: object) -> Relay:
    metrics = ServiceMetrics("relay")
    holder = PeerMap(log=service_logger("relay"), metrics=metrics, pins=None)  # offer() only
    holder.offer(make_map(1))
    config = RelaySettings(peer_id="p1", listen=f"{RELAY_IP}:0", **settings)  # type: ignore[arg-type]
    relay = ProxyRelay(config, holder, RelayMetrics(metrics), service_logger("relay"))
    await relay.start()
    return Relay(relay, holder, metrics)


def bound_port(host: str = RELAY_IP) -> socket.socket:
    """A bound socket that is not listening yet: connecting to it is refused."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def bound_unix(path: Path) -> socket.socket:
    """A bound Unix socket that is not listening yet: connecting to it is refused."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds 107 bytes; pytest's paths are long)."""
    with tempfile.TemporaryDirectory(prefix="mshr", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def upstream(short_dir: Path) -> AsyncIterator[socket.socket]:
    """sshd's relay socket, bound but not listening yet."""
    sock = bound_unix(short_dir / "relay.sock")
    try:
        yield sock
    finally:
        sock.close()


def socket_of(upstream: socket.socket) -> Path:
    return Path(upstream.getsockname())


async def accept(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """Accept one connection; its reader, writer and the caller's uid (or -1 over TCP)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    conn, _ = await loop.sock_accept(sock)
    uid = -1
    if conn.family == socket.AF_UNIX:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        uid = struct.unpack("3i", creds)[1]
    reader, writer = await asyncio.open_connection(sock=conn)
    return reader, writer, uid


async def test_bytes_sent_before_the_upstream_is_up_arrive_after_the_proxy_header(
    upstream: socket.socket,
) -> None:
    relay = await start_relay(sshd_socket=socket_of(upstream))
    try:
        reader, writer = await relay.connect()
        payload = b"SSH-2.0-early\r\n" + os.urandom(100_000)
        writer.write(payload)
        writer.write_eof()  # the client is done before the upstream even listens
        await asyncio.sleep(0.3)  # the relay is retrying a refused upstream meanwhile
        upstream.listen(8)
        async with asyncio.timeout(10):
            up_reader, up_writer, up_uid = await accept(upstream)
            received = await up_reader.read()  # until EOF: the half-close came through
        header, used = parse_v2(received)
        assert received.startswith(SIGNATURE)
        assert header.source is not None
        assert header.source[0] == CLIENT_IP
        assert header.destination == (RELAY_IP, relay.port)
        assert received[used:] == payload
        assert up_uid == os.geteuid()  # sshd checks the relay's uid on its socket
        up_writer.write(b"reply after half-close")
        up_writer.close()
        async with asyncio.timeout(10):
            assert await reader.read() == b"reply after half-close"
        writer.close()
        assert relay.count("accepted_sshd") == 1
    finally:
        await relay.relay.stop()


async def test_a_source_without_a_rule_is_refused_before_any_byte_is_read(
    upstream: socket.socket,
) -> None:
    upstream.listen(8)
    relay = await start_relay(sshd_socket=socket_of(upstream))
    try:
        reader, writer = await relay.connect(source=STRANGER_IP)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        reader, writer = await relay.connect(source=RELAY_IP)  # the peer's own address
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert relay.count("no_rule") == 1
        assert relay.count("self") == 1
        upstream.setblocking(False)
        with pytest.raises(BlockingIOError):
            upstream.accept()  # nothing ever reached the upstream
    finally:
        await relay.relay.stop()


async def test_without_a_map_every_connection_is_refused(upstream: socket.socket) -> None:
    relay = await start_relay(sshd_socket=socket_of(upstream))
    relay.holder.drop()
    try:
        reader, writer = await relay.connect()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert relay.count("no_map") == 1
    finally:
        await relay.relay.stop()


async def test_with_ssh_off_connections_go_to_the_native_upstream_without_a_header(
    upstream: socket.socket,
) -> None:
    sshd = upstream
    sshd.listen(8)
    native = bound_port()
    native.listen(8)
    relay = await start_relay(
        sshd_socket=socket_of(sshd),
        native_upstream=f"{RELAY_IP}:{native.getsockname()[1]}",
    )
    relay.holder.offer(make_map(2, ssh_enabled=False))
    try:
        _reader, writer = await relay.connect()
        writer.write(b"SSH-2.0-client\r\n")
        writer.write_eof()
        async with asyncio.timeout(10):
            up_reader, up_writer, _ = await accept(native)
            assert await up_reader.read() == b"SSH-2.0-client\r\n"
        up_writer.close()
        writer.close()
        assert relay.count("accepted_native") == 1
        sshd.setblocking(False)
        with pytest.raises(BlockingIOError):
            sshd.accept()
    finally:
        native.close()
        await relay.relay.stop()


async def test_with_ssh_off_and_no_native_upstream_connections_are_closed(
    upstream: socket.socket,
) -> None:
    upstream.listen(8)
    relay = await start_relay(sshd_socket=socket_of(upstream))
    relay.holder.offer(make_map(2, ssh_enabled=False))
    try:
        reader, writer = await relay.connect()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert relay.count("ssh_off") == 1
    finally:
        await relay.relay.stop()


async def test_a_slow_upstream_pauses_the_client_and_nothing_is_lost(
    upstream: socket.socket,
) -> None:
    upstream.listen(8)
    relay = await start_relay(sshd_socket=socket_of(upstream))
    total = 48 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256(chunk * (total // len(chunk))).hexdigest()
    try:
        _reader, writer = await relay.connect()

        async def send() -> None:
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        up_reader, up_writer, _ = await accept(upstream)
        up_writer.transport.pause_reading()  # type: ignore[attr-defined]
        # The upstream reads nothing: wait until the relay has stopped taking client bytes.
        async with asyncio.timeout(20):
            while not relay.relay.pipes:
                await asyncio.sleep(0.01)
            (pipe,) = relay.relay.pipes
            last = -1
            while pipe.bytes_in != last:
                last = pipe.bytes_in
                await asyncio.sleep(0.3)
        assert not sender.done()
        assert pipe.bytes_in < total
        assert pipe.inbound.received - pipe.inbound.sent <= CHUNK  # the relay holds one chunk
        # Now drain it: every byte arrives, in order.
        up_writer.transport.resume_reading()  # type: ignore[attr-defined]
        async with asyncio.timeout(60):
            received = await up_reader.read()
            await sender
        _, used = parse_v2(received)
        assert hashlib.sha256(received[used:]).hexdigest() == digest
        up_writer.close()
        writer.close()
    finally:
        await relay.relay.stop()


async def test_past_max_connections_new_clients_are_refused(upstream: socket.socket) -> None:
    upstream.listen(8)
    relay = await start_relay(sshd_socket=socket_of(upstream), max_connections=1)
    try:
        _reader, writer = await relay.connect()
        async with asyncio.timeout(10):
            _up_reader, up_writer, _ = await accept(upstream)
            while not relay.relay.pipes:
                await asyncio.sleep(0.01)
        reader2, writer2 = await relay.connect()
        async with asyncio.timeout(5):
            assert await reader2.read() == b""
        assert relay.count("too_many") == 1
        for w in (writer, writer2, up_writer):
            w.close()
    finally:
        await relay.relay.stop()
