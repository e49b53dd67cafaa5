"""SFTP and scp (SPEC §7): OpenSSH sftp, scp (SFTP mode) and scp -O (legacy) against the
server, as the target user; the flag off refuses with the SPEC §9 text."""

from __future__ import annotations

import hashlib
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, Sshd, SshdFactory


@pytest.fixture
async def sftp_server(mesh: Mesh, sshd_factory: SshdFactory) -> Sshd:
    await mesh.publish_map()
    return await sshd_factory.start(enable_ssh_sftp=True)


def home_of(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_sftp_puts_and_gets_a_50_mib_file_intact_as_the_target_user(
    sftp_server: Sshd, client_for: Any, issuer: Issuer, local_user: str, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(50 * 1024 * 1024))
    back = tmp_path / "back.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"put {source} big.bin\nget big.bin {back}\nrm big.bin\n")
    client = client_for(sftp_server)
    result = await client.tool(
        "sftp",
        "-b",
        str(batch),
        f"{local_user}@{sftp_server.host}",
        token=issuer.mint("alice-id"),
        timeout=120,
    )
    assert result.returncode == 0, result.err
    assert digest(back) == digest(source)
    assert sftp_server.metric("meshssh_sshd_sftp_sessions_total", result="started") == 1


async def test_scp_in_sftp_mode_and_legacy_mode_both_work(
    sftp_server: Sshd,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    tmp_path: Path,
    mesh: Mesh,
) -> None:
    client = client_for(sftp_server)
    source = tmp_path / "note.txt"
    source.write_text("hello over scp\n")
    for mode, flags in (("sftp", []), ("legacy", ["-O"])):
        remote = f"{local_user}@{sftp_server.host}:scp-{mode}.txt"
        up = await client.tool("scp", *flags, str(source), remote, token=issuer.mint("alice-id"))
        assert up.returncode == 0, (mode, up.err)
        down = tmp_path / f"down-{mode}.txt"
        got = await client.tool("scp", *flags, remote, str(down), token=issuer.mint("alice-id"))
        assert got.returncode == 0, (mode, got.err)
        assert down.read_text() == "hello over scp\n"
        if os.geteuid() == 0:
            stored = home_of(local_user) / f"scp-{mode}.txt"
            assert stored.owner() == local_user
            stored.unlink()
    started = await mesh.wait_audit(lambda e: e.kind == "sftp-start")
    assert started.local_user == local_user


async def test_sftp_off_refuses_with_its_text(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    tmp_path: Path,
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    client = client_for(sshd)
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    sftp = await client.tool(
        "sftp", "-b", str(batch), f"{local_user}@{sshd.host}", token=issuer.mint("alice-id")
    )
    assert sftp.returncode != 0
    assert "SFTP subsystem not available" in sftp.err
    assert "--enable-ssh-sftp" in sftp.err
    source = tmp_path / "f"
    source.write_text("x")
    scp = await client.tool(
        "scp", str(source), f"{local_user}@{sshd.host}:f", token=issuer.mint("alice-id")
    )
    assert scp.returncode != 0
    assert "SFTP subsystem not available" in scp.err
    assert sshd.metric("meshssh_sshd_sftp_sessions_total", result="refused") == 2


async def test_a_missing_sftp_server_program_is_reported(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    tmp_path: Path,
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(enable_ssh_sftp=True, sftp_server=tmp_path / "nope")
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    result = await client_for(sshd).tool(
        "sftp", "-b", str(batch), f"{local_user}@{sshd.host}", token=issuer.mint("alice-id")
    )
    assert result.returncode != 0
    assert "no sftp-server program" in result.err
