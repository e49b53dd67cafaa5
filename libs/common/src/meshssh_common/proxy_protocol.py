"""PROXY protocol v2 (binary): the relay tells sshd who the real client was.

The relay writes one header before any client byte; sshd reads exactly the header's bytes from
the raw socket (never more, so the SSH identification string that follows stays unread) and then
hands the socket to asyncssh. sshd reads a header only on its relay Unix socket, from the
relay's uid (SO_PEERCRED); its TCP port never parses one (SPEC §6).

Example::

    writer.write(encode_v2(("100.64.0.7", 51234), ("100.64.0.1", 22)))
    header = await read_v2(loop, sock, timeout=5)   # on the sshd side
    header.source  # ("100.64.0.7", 51234)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass

from meshssh_common.errors import WireError

__all__ = ["SIGNATURE", "ProxyHeader", "ProxyProtocolError", "encode_v2", "parse_v2", "read_v2"]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_CMD_LOCAL = 0x20
_CMD_PROXY = 0x21
_TCP4 = 0x11
_TCP6 = 0x21
_MAX_BODY = 512  # addresses plus room for TLVs; anything larger is refused


class ProxyProtocolError(WireError):
    """The bytes are not a valid PROXY v2 header (or arrived too slowly)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header; ``local`` (a health check) carries no addresses."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    local: bool = False


def encode_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """Encode a PROXY v2 ``PROXY`` header for a TCP connection.

    Raises:
        ValueError: the two addresses are not of the same family.
    """
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError(f"address families differ: {source[0]} vs {destination[0]}")
    family = _TCP4 if src.version == 4 else _TCP6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes((_CMD_PROXY, family)) + struct.pack("!H", len(body)) + body


def _body_length(fixed: bytes) -> tuple[int, int, int]:
    if len(fixed) != 16 or fixed[:12] != SIGNATURE:
        raise ProxyProtocolError("no PROXY v2 signature")
    command, family = fixed[12], fixed[13]
    (length,) = struct.unpack("!H", fixed[14:16])
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"unsupported PROXY version/command 0x{command:02x}")
    if length > _MAX_BODY:
        raise ProxyProtocolError(f"PROXY header body of {length} bytes is too large")
    return command, family, length


def _decode_body(command: int, family: int, body: bytes) -> ProxyHeader:
    if command == _CMD_LOCAL:
        return ProxyHeader(None, None, local=True)
    if family == _TCP4 and len(body) >= 12:
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == _TCP6 and len(body) >= 36:
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack("!HH", body[32:36])
    else:
        raise ProxyProtocolError(f"unsupported PROXY family 0x{family:02x} or short body")
    return ProxyHeader((src, sport), (dst, dport))


def parse_v2(data: bytes) -> tuple[ProxyHeader, int]:
    """Parse a header at the start of ``data``; returns it and the bytes it used.

    Raises:
        ProxyProtocolError: not a complete, valid header.
    """
    _, _, length = _body_length(data[:16])
    if len(data) < 16 + length:
        raise ProxyProtocolError("truncated PROXY v2 header")
    command, family, _ = _body_length(data[:16])
    return _decode_body(command, family, data[16 : 16 + length]), 16 + length


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ProxyProtocolError("connection closed inside the PROXY header")
        data += chunk
    return data


async def read_v2(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, *, timeout: float = 5.0
) -> ProxyHeader:
    """Read exactly one PROXY v2 header from a non-blocking socket.

    Raises:
        ProxyProtocolError: bad signature, bad header, early close, or no header in ``timeout``.
    """
    try:
        async with asyncio.timeout(timeout):
            fixed = await _recv_exactly(loop, sock, 16)
            command, family, length = _body_length(fixed)
            body = await _recv_exactly(loop, sock, length)
    except TimeoutError as e:
        raise ProxyProtocolError(f"no complete PROXY header within {timeout}s") from e
    return _decode_body(command, family, body)
