"""The relay hop (SPEC §6): sshd believes a PROXY v2 header only on its relay socket, from the
relay's uid (SO_PEERCRED); TCP 22022 never reads one.

The root-only tests run the attacker as a throwaway local user (``setpriv`` drops to its uid
and gid): a plain stdlib Python client that sends a forged header, as any local user could.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshssh_common.proxy_protocol import encode_v2
from meshssh_common.unix_paths import reachable
from meshssh_testkit import run_command
from meshssh_testkit.os_users import throwaway_user
from meshssh_testkit.plugin import need_tool

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory

RELAY_IP = "127.0.0.5"
SYSTEM_PYTHON = Path("/usr/bin/python3")  # readable by every user (the venv's lives in /root)

# Connects (TCP from a bound address, or to a Unix socket), sends a header and an SSH
# identification, and prints the hex of whatever the server sent before closing ("-": nothing).
_CLIENT = """
import os, socket, sys
kind, target, bind, header = sys.argv[1:5]
if kind == "tcp":
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.bind((bind, 0))
    s.connect((host, int(port)))
else:
    s = socket.socket(socket.AF_UNIX)
    s.connect(target)
s.settimeout(5)
data = b""
try:  # a refusal may close the socket before or while we send
    s.sendall(bytes.fromhex(header) + b"SSH-2.0-OpenSSH_9.2\\r\\n")
    while chunk := s.recv(4096):
        data += chunk
except (BrokenPipeError, ConnectionResetError, TimeoutError):
    pass
print(os.getuid(), data.hex() or "-")
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for the socket (sun_path holds 107 bytes; pytest's paths are long)."""
    with tempfile.TemporaryDirectory(prefix="mshr", dir="/tmp") as name:
        yield Path(name)


class Relay:
    """A minimal relay: TCP on RELAY_IP, then sshd's relay socket with PROXY v2 first."""

    def __init__(self, path: Path, sshd: Sshd) -> None:
        self.path = path
        self.sshd = sshd
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, RELAY_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        with reachable(self.path) as name:
            up_r, up_w = await asyncio.open_unix_connection(name)
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


async def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await loop.sock_recv(sock, 4096):
                data += chunk
    return data


async def unix_exchange(path: Path, data: bytes) -> bytes:
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused at once
            await asyncio.get_running_loop().sock_sendall(sock, data)
        return await read_all(sock)
    finally:
        sock.close()


def outcome(sshd: Sshd, name: str) -> float:
    return float(sshd.metric("meshssh_sshd_connections_total", outcome=name))


async def test_the_relay_socket_passes_the_original_source_which_is_checked_on_port_22(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    openssh: Any,
    tmp_path: Path,
) -> None:
    # The map lets 127.0.0.3 in on port 22 only (the relay's port), nobody on 22022.
    await mesh.publish_map(rules=[mesh.rule("127.0.0.3/32", port="22")])
    path = tmp_path / ("state" * 20) / "sshd" / "relay.sock"
    assert len(str(path)) > 107  # longer than sun_path: sshd and the relay still get there
    sshd = await sshd_factory.start(relay_socket=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    relay = Relay(path, sshd)
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
    assert outcome(sshd, "no_rule") == 2
    await sshd_factory.stop(sshd)
    assert not path.exists()  # removed at shutdown


async def test_the_relay_socket_needs_a_valid_header_and_tcp_never_reads_one(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    short_dir: Path,
) -> None:
    await mesh.publish_map(rules=[mesh.rule("127.0.0.0/8", port="22"), mesh.rule("127.0.0.3/32")])
    path = short_dir / "sshd" / "relay.sock"
    path.parent.mkdir(mode=0o755)
    path.write_text("stale")  # not a socket: refused, never removed
    with pytest.raises(RuntimeError):
        await sshd_factory.start(relay_socket=path)
    path.unlink()
    sshd = await sshd_factory.start(relay_socket=path, proxy_header_timeout=0.5)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # tightened
    assert await unix_exchange(path, b"SSH-2.0-OpenSSH_9.2\r\n") == b""
    assert outcome(sshd, "bad_proxy_header") == 1
    sock = socket.socket(socket.AF_UNIX)  # says nothing: refused after the header timeout
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        assert await read_all(sock) == b""
    finally:
        sock.close()
    assert outcome(sshd, "bad_proxy_header") == 2
    # TCP from the mesh address (the old relay address) or anywhere else: the header is not
    # read as one; it is garbage to the SSH server, and the spoofed source gains nothing.
    for bind, answered in (("127.0.0.2", False), ("127.0.0.3", True)):
        tcp = socket.socket()
        tcp.setblocking(False)
        tcp.bind((bind, 0))
        try:
            await asyncio.get_running_loop().sock_connect(tcp, (sshd.host, sshd.port))
            forged = encode_v2(("127.0.0.9", 1), ("127.0.0.2", 22)) + b"SSH-2.0-x\r\n"
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused at once
                await asyncio.get_running_loop().sock_sendall(tcp, forged)
            answer = await read_all(tcp)
        finally:
            tcp.close()
        assert answer.startswith(b"SSH-2.0-MeshSSH-") is answered
    assert outcome(sshd, "self") == 1  # 127.0.0.2 is the peer itself, header or not
    ok = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert ok.returncode == 0, ok.err
    audited = await mesh.audit_events()
    assert not any("127.0.0.9" in e.source_addr for e in audited)


async def test_a_caller_that_is_not_the_relay_uid_is_refused_on_the_relay_socket(
    mesh: Mesh, sshd_factory: SshdFactory, short_dir: Path
) -> None:
    await mesh.publish_map(rules=[mesh.rule("127.0.0.0/8", port="22")])
    path = short_dir / "sshd" / "relay.sock"
    sshd = await sshd_factory.start(relay_socket=path, relay_uid=os.geteuid() + 4242)
    header = encode_v2(("127.0.0.3", 40000), ("127.0.0.2", 22))
    assert await unix_exchange(path, header + b"SSH-2.0-OpenSSH_9.2\r\n") == b""
    assert outcome(sshd, "untrusted_relay") == 1
    assert outcome(sshd, "accepted") == 0
    event = await mesh.wait_audit(lambda e: e.kind == "connection-refused")
    assert event.reason == "untrusted_relay"


def _need_root_and_python() -> None:
    need_tool(os.geteuid() == 0, "root (to create a throwaway user)")
    need_tool(SYSTEM_PYTHON.exists(), str(SYSTEM_PYTHON))


async def as_user(name: str, kind: str, target: str, bind: str, header: bytes) -> bytes:
    """Run the forging client as local user ``name``; what the server sent it."""
    entry = pwd.getpwnam(name)
    result = await run_command(
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--clear-groups",
        str(SYSTEM_PYTHON),
        "-c",
        _CLIENT,
        kind,
        target,
        bind,
        header.hex(),
        timeout=30,
        cwd="/",
    )
    assert result.returncode == 0, result.err
    uid, data = result.out.split()
    assert int(uid) == entry.pw_uid != os.geteuid()  # really that user, not root
    return b"" if data == "-" else bytes.fromhex(data)


@pytest.mark.parametrize("disable_ssh_auth", [False, True], ids=["jwt", "no-auth"])
async def test_a_local_user_forging_a_proxy_header_to_22022_from_the_mesh_address_is_refused(
    disable_ssh_auth: bool, mesh: Mesh, sshd_factory: SshdFactory, short_dir: Path
) -> None:
    _need_root_and_python()
    # 127.0.0.3 may come in through the relay (port 22); the forger claims to be it.
    await mesh.publish_map(rules=[mesh.rule("127.0.0.3/32", port="22")])
    sshd = await sshd_factory.start(
        disable_ssh_auth=disable_ssh_auth, relay_socket=short_dir / "sshd" / "relay.sock"
    )
    forged = encode_v2(("127.0.0.3", 40000), ("127.0.0.2", 22))
    with throwaway_user() as name:
        received = await as_user(name, "tcp", f"{sshd.host}:{sshd.port}", mesh.mesh_ip, forged)
    assert received == b""  # closed before any SSH byte: the header was never read
    assert outcome(sshd, "self") == 1  # the TCP source, the peer's own address, counts
    assert outcome(sshd, "accepted") == 0
    assert sshd.metric("meshssh_sshd_auth_attempts_total", method="none", result="accept") == 0
    event = await mesh.wait_audit(lambda e: e.kind == "connection-refused")
    assert event.source_addr.startswith(f"{mesh.mesh_ip}:")


async def test_a_local_user_on_the_relay_socket_is_refused_while_the_relay_uid_gets_in(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    openssh: Any,
    short_dir: Path,
) -> None:
    _need_root_and_python()
    await mesh.publish_map(rules=[mesh.rule("127.0.0.3/32", port="22")], with_jwt=False)
    path = short_dir / "sshd" / "relay.sock"
    sshd = await sshd_factory.start(disable_ssh_auth=True, relay_socket=path)
    # Make the socket reachable for the test: only SO_PEERCRED stands in the way now.
    for item, mode in ((short_dir, 0o755), (path.parent, 0o755), (path, 0o666)):
        os.chmod(item, mode)
    forged = encode_v2(("127.0.0.3", 40000), ("127.0.0.2", 22))
    with throwaway_user() as name:
        received = await as_user(name, "unix", str(path), "", forged)
    assert received == b""
    assert outcome(sshd, "untrusted_relay") == 1
    assert outcome(sshd, "accepted") == 0
    # The relay runs as sshd's uid (root here): the same header gets the real client in.
    relay = Relay(path, sshd)
    relay_port = await relay.start()
    try:
        client = client_for(sshd)
        openssh.trust(RELAY_IP, relay_port, sshd.host_key.public_line)
        result = await openssh.run(
            "ssh",
            "-p",
            str(relay_port),
            f"{local_user}@{RELAY_IP}",
            "echo $SSH_CLIENT",
            options=client.options(method="none"),
            env=client.env(""),
        )
    finally:
        await relay.close()
    assert result.returncode == 0, result.err
    assert result.out.startswith("127.0.0.3 ")
    assert outcome(sshd, "accepted") == 1
