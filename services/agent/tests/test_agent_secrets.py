"""The setup key never reaches a command line (issue 16): ``ps`` shows every process's argv to
every local user.

``meshssh up`` takes the key from ``MESHSSH_SETUP_KEY`` or ``--setup-key-file``; ``--setup-key``
still works but warns. Whichever way, the agent gets it in its environment (or reads the file)
and never in its argv, and its children (meshssh-sshd, meshssh-relay) get it in neither. The
test reads ``/proc/<pid>/cmdline`` (and the children's ``environ``) of the real processes.

The peer's NATS seed (made on the peer, ``nats.nk``) is treated the same way: it is in no
command line or environment; the children get the path of the creds file
(``--nats-creds <state-dir>/nats.creds``) and both files are 0600.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_common.nats_jwt import read_creds
from meshssh_testkit.management import SERVER_KEY, Management
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.peer_agent import agent_request
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import script

KEY = SERVER_KEY  # the real meshssh-policy's seed: a server with SSH enabled


@pytest.fixture
async def policy(
    nc: NATS, nats_server: NatsServer, tmp_path: Path, services: ServiceFactory
) -> Management:
    return await Management.start(services, nats_server, nc, tmp_path / "policy")


async def meshssh(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        script("meshssh"),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


@pytest.mark.parametrize("way", ["env", "file", "argv"])
async def test_the_setup_key_is_in_no_command_line_of_the_agent_or_its_children(
    tmp_path: Path, nats_url: str, policy: Management, way: str
) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "MESHSSH_SETUP_KEY"}
    extra: list[str] = []
    if way == "env":
        env["MESHSSH_SETUP_KEY"] = KEY
    elif way == "file":
        key_file = tmp_path / "setup-key"
        key_file.write_text(KEY + "\n")
        extra = ["--setup-key-file", str(key_file)]
    else:
        extra = ["--setup-key", KEY]
    args = [
        "up",
        "--state-dir",
        str(state),
        "--mesh-ip",
        "127.0.0.2",
        "--name",
        "server",
        "--nats-url",
        nats_url,
        "--management-url",
        policy.api,
        "--ssh-port",
        "0",
        "--relay-port",
        "0",
        "--relay-mode",
        "proxy",
        "--allow-server-ssh",
        "--ssh-config-file",
        f"{state}.ssh_config",
        *extra,
    ]
    try:
        code, _, err = await meshssh(*args, env=env)
        assert code == 0, err
        assert (await policy.peer("server"))["ssh_enabled"]  # the key did arrive
        assert ("warning: --setup-key puts the key" in err) == (way == "argv")
        async with asyncio.timeout(20):
            while True:
                status = (await agent_request(state, {"op": "status"}))["status"]
                children = {c["name"]: c for c in status["children"]}
                if all(c.get("state") == "running" for c in children.values()):
                    break
                await asyncio.sleep(0.1)
        agent_argv = proc_file(status["pid"], "cmdline")
        assert b"meshssh" in agent_argv
        assert KEY.encode() not in agent_argv
        seed = read_creds(state / "nats.creds").seed.encode()
        assert (state / "nats.nk").read_bytes().strip() == seed
        for name in ("nats.nk", "nats.creds"):
            assert (state / name).stat().st_mode & 0o777 == 0o600, name
        assert seed not in agent_argv
        for child in children.values():
            argv = proc_file(child["pid"], "cmdline")
            environ = proc_file(child["pid"], "environ")
            for secret in (KEY.encode(), seed):
                assert secret not in argv, child["name"]
                assert secret not in environ, child["name"]
            assert f"--nats-creds\0{state / 'nats.creds'}\0".encode() in argv, child["name"]
    finally:
        code, _, err = await meshssh("down", "--state-dir", str(state), env=env)
        assert code == 0, err


async def test_an_unreadable_key_file_is_a_bad_setting_named_by_its_flag(
    tmp_path: Path, nats_url: str
) -> None:
    code, _, err = await meshssh(
        "up",
        "--state-dir",
        str(tmp_path / "state"),
        "--mesh-ip",
        "127.0.0.2",
        "--nats-url",
        nats_url,
        "--setup-key-file",
        str(tmp_path / "missing"),
        env=dict(os.environ),
    )
    assert code == 2
    assert "--setup-key-file" in err
