"""Agent forwarding (SPEC §3, ``--enable-ssh-agent-forwarding``) with OpenSSH and a real
ssh-agent: the session gets a socket only its user can use, gone when the connection ends;
with the flag off the user is told "Agent forwarding not available"."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshssh_testkit.openssh import OpenSSH
from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import run_command
from meshssh_testkit.ssh_agent import ssh_agent, ssh_agent_available

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, SshdFactory

# Lists the keys, then the socket's and its directory's owner, mode and type, then the path.
PROBE = 'ssh-add -l; s="$SSH_AUTH_SOCK"; stat -c "%U %a %F" "$s" "$(dirname "$s")"; echo "sock=$s"'


def present(path: str) -> bool:
    return os.path.lexists(path) or os.path.lexists(os.path.dirname(path))


async def gone(path: str) -> bool:
    """Whether the socket and its directory disappear (within 10 s)."""
    async with asyncio.timeout(10):
        while present(path):
            await asyncio.sleep(0.05)
    return True


async def test_ssh_A_lists_the_clients_key_through_a_socket_only_the_user_can_use(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    openssh: OpenSSH,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    need_tool(ssh_agent_available(), "ssh-agent and ssh-add")
    await mesh.publish_map()
    sshd = await sshd_factory.start(enable_ssh_agent_forwarding=True)
    async with ssh_agent(tmp_path / "agent", openssh.key_path) as agent:
        monkeypatch.setenv("SSH_AUTH_SOCK", agent.socket)
        result = await client_for(sshd).ssh(
            PROBE,
            token=issuer.mint("alice-id"),
            user=local_user,
            opts=["-A"],
        )
    assert result.returncode == 0, result.err
    lines = result.out.splitlines()
    assert agent.fingerprint in lines[0]  # the client's key, through the forwarded agent
    assert lines[1] == f"{local_user} 600 socket"
    assert lines[2] == f"{local_user} 700 directory"
    path = lines[3].removeprefix("sock=")
    assert not path.startswith(agent.socket)
    assert await gone(path)  # removed with the connection
    assert sshd.metric("meshssh_sshd_forwards_total", kind="agent", result="opened") == 1


async def test_without_the_flag_ssh_A_is_told_agent_forwarding_is_not_available(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    openssh: OpenSSH,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    need_tool(ssh_agent_available(), "ssh-agent and ssh-add")
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    async with ssh_agent(tmp_path / "agent", openssh.key_path) as agent:
        monkeypatch.setenv("SSH_AUTH_SOCK", agent.socket)
        result = await client_for(sshd).ssh(
            'echo "sock=$SSH_AUTH_SOCK"',
            token=issuer.mint("alice-id"),
            user=local_user,
            opts=["-A"],
        )
    assert result.returncode == 0, result.err  # the session itself still runs
    assert result.out.strip() == "sock="
    assert "Agent forwarding not available" in result.err
    assert "--enable-ssh-agent-forwarding" in result.err
    assert sshd.metric("meshssh_sshd_forwards_total", kind="agent", result="refused") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="another local user needs root")
async def test_another_local_user_cannot_use_the_forwarded_agent(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    other_user: str,
    openssh: OpenSSH,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    need_tool(ssh_agent_available(), "ssh-agent and ssh-add")
    await mesh.publish_map()
    sshd = await sshd_factory.start(enable_ssh_agent_forwarding=True)
    client = client_for(sshd)
    async with ssh_agent(tmp_path / "agent", openssh.key_path) as agent:
        monkeypatch.setenv("SSH_AUTH_SOCK", agent.socket)
        session = await asyncio.create_subprocess_exec(
            *client.spawn_args(
                'echo "sock=$SSH_AUTH_SOCK"; exec sleep 30', user=local_user, opts=["-A"]
            ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **client.env(issuer.mint("alice-id"))},
        )
        try:
            assert session.stdout is not None
            async with asyncio.timeout(15):
                line = (await session.stdout.readline()).decode().strip()
            path = line.removeprefix("sock=")
            assert path, line
            other = pwd.getpwnam(other_user)
            probe = await run_command(
                "ssh-add",
                "-l",
                env={"SSH_AUTH_SOCK": path, "PATH": os.environ["PATH"]},
                replace_env=True,
                timeout=15,
                user=other.pw_uid,
                group=other.pw_gid,
                extra_groups=[],
            )
            probe.check(2)  # cannot connect to the agent
            assert agent.fingerprint not in probe.out
        finally:
            session.kill()
            await session.wait()
    assert await gone(path)
