"""PROXY v2: round trips, exact reads that leave the SSH banner unread, garbage refused."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshssh_common.proxy_protocol import (
    ProxyHeader,
    ProxyProtocolError,
    encode_v2,
    parse_v2,
    read_v2,
)


@pytest.mark.parametrize(
    ("src", "dst"),
    [(("100.64.0.7", 51234), ("100.64.0.1", 22)), (("fd00::7", 1), ("fd00::1", 22))],
)
def test_headers_round_trip(src: tuple[str, int], dst: tuple[str, int]) -> None:
    header, used = parse_v2(encode_v2(src, dst) + b"SSH-2.0-x\r\n")
    assert header == ProxyHeader(src, dst)
    assert used == len(encode_v2(src, dst))


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x00\x00",
        b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + b"x" * 12,
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x01",
    ],
)
def test_bad_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_v2(data)


async def test_reading_from_a_socket_consumes_exactly_the_header() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        b.sendall(encode_v2(("127.0.0.9", 4000), ("127.0.0.2", 22)) + b"SSH-2.0-client\r\n")
        header = await read_v2(loop, a, timeout=5)
        assert header.source == ("127.0.0.9", 4000)
        assert await loop.sock_recv(a, 100) == b"SSH-2.0-client\r\n"
    finally:
        a.close()
        b.close()


async def test_a_silent_or_garbage_peer_is_refused_within_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        with pytest.raises(ProxyProtocolError, match="within"):
            await read_v2(loop, a, timeout=0.2)
        b.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(ProxyProtocolError, match="signature"):
            await read_v2(loop, a, timeout=2)
    finally:
        a.close()
        b.close()
