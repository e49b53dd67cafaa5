"""The leaner asyncssh packet path: same bytes on the wire, same data at both ends.

Real asyncssh servers and clients on loopback, and the real OpenSSH client, move data both
ways through every cipher family (the two AEADs the module rewrites, and CTR, which keeps
asyncssh's own code and its SSH_MSG_IGNORE), with compression and key re-exchange every
few MB, and check every byte by SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from meshssh_common import ssh_packets
from meshssh_common.ssh_packets import InputBuffer
from meshssh_testkit.openssh import OpenSSH, openssh_available

AEAD = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
DOWNLOAD = 3_000_000


def test_input_buffer_behaves_like_the_bytes_it_holds() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    buf = InputBuffer(data[:1000])
    buf += data[1000:5000]
    buf += b""
    buf += data[5000:]
    assert len(buf) == len(data)
    assert buf
    assert bytes(buf[:10]) == data[:10]  # small slices are bytes
    assert isinstance(buf[:10], bytes)
    assert bytes(buf[1200:4000]) == data[1200:4000]  # inside one chunk: a view
    assert bytes(buf[900:1100]) == data[900:1100]  # across chunks: joined
    assert bytes(buf[4000:6000]) == data[4000:6000]
    assert buf.find(b"\x05\x06", 0, 300) == data.find(b"\x05\x06", 0, 300)
    rest = buf[4321:]  # consuming: a new buffer over the same chunks
    assert len(rest) == len(data) - 4321
    assert bytes(rest[:5000]) == data[4321:9321]
    assert bytes(rest) == data[4321:]
    empty = rest[len(rest) :]
    assert len(empty) == 0
    assert not empty
    empty += b"abc"
    assert bytes(empty) == b"abc"
    assert bytes(buf[5:3]) == b""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Read stdin to EOF, answer with its length and hash, then send DOWNLOAD bytes."""
    h, n = hashlib.sha256(), 0
    while chunk := await process.stdin.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    process.stdout.write(f"{n} {h.hexdigest()}\n".encode())
    process.stdout.write(bytes(range(256)) * (DOWNLOAD // 256) + b"x" * (DOWNLOAD % 256))
    process.exit(0)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[int, asyncssh.SSHKey, OpenSSH]]:
    assert ssh_packets.install()
    key = asyncssh.generate_private_key("ssh-ed25519")
    client = OpenSSH(tmp_path)
    listener = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[key],
        authorized_client_keys=asyncssh.import_authorized_keys(client.public_key),
        process_factory=_handle,
        encoding=None,
        max_pktsize=ssh_packets.MAX_PACKET,
        compression_algs=["zlib@openssh.com", "none"],
        encryption_algs=[*AEAD, "aes128-ctr"],
    )
    port = listener.sockets[0].getsockname()[1]
    client.trust("127.0.0.1", port, key.export_public_key().decode())
    try:
        yield port, key, client
    finally:
        listener.close()
        await listener.wait_closed()


def _expected_download() -> bytes:
    return bytes(range(256)) * (DOWNLOAD // 256) + b"x" * (DOWNLOAD % 256)


@pytest.mark.parametrize("cipher", [*AEAD, "aes128-ctr"])
@pytest.mark.parametrize("compression", ["none", "zlib@openssh.com"])
async def test_asyncssh_to_asyncssh_keeps_every_byte(
    server: tuple[int, asyncssh.SSHKey, OpenSSH], cipher: str, compression: str
) -> None:
    port, _, client = server
    async with asyncio.timeout(60):
        conn = await asyncssh.connect(
            "127.0.0.1",
            port,
            known_hosts=None,
            username="tester",
            client_keys=[str(client.key_path)],
            encryption_algs=[cipher],
            compression_algs=[compression],
            rekey_bytes=2_000_000,  # several key re-exchanges mid-stream
        )
        async with conn:
            proc = await conn.create_process("x", encoding=None, max_pktsize=ssh_packets.MAX_PACKET)
            h, total = hashlib.sha256(), 0
            for i in range(120):  # odd sizes: packets split and joined anywhere
                chunk = os.urandom(1 + (i * 7919) % 150_000)
                h.update(chunk)
                total += len(chunk)
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.write_eof()
            line = await proc.stdout.readline()
            rest = await proc.stdout.read()
            assert line.decode().split() == [str(total), h.hexdigest()]
            assert _sha(rest) == _sha(_expected_download())


@pytest.mark.skipif(not openssh_available(), reason="OpenSSH client not installed")
@pytest.mark.parametrize("cipher", AEAD)
async def test_openssh_client_keeps_every_byte(
    server: tuple[int, asyncssh.SSHKey, OpenSSH], cipher: str
) -> None:
    port, _, client = server
    payload = os.urandom(5_000_000)
    result = await client.ssh(
        "-c",
        cipher,
        "-o",
        "RekeyLimit=1M",
        "-p",
        str(port),
        "tester@127.0.0.1",
        "x",
        input=payload,
        timeout=60,
    )
    assert result.returncode == 0, result.err
    line, _, rest = result.stdout.partition(b"\n")
    assert line.decode().split() == [str(len(payload)), _sha(payload)]
    assert _sha(rest) == _sha(_expected_download())
