"""meshssh-policy as a process: its settings, and bad settings exiting 2 with one line."""

from __future__ import annotations

from pathlib import Path

from meshssh_testkit import RunResult, run_command_sync, script
from meshssh_testkit.plugin import ServiceFactory


def run(*args: str) -> RunResult:
    return run_command_sync(script("meshssh-policy"), *args, env={"PATH": "/usr/bin:/bin"},
                            replace_env=True, timeout=30)  # fmt: skip


def test_help_lists_every_policy_setting_with_its_env_variable() -> None:
    out = run("--help").out
    settings = [
        ("--listen", "MESHSSH_POLICY_LISTEN"),
        ("--admin-token", "MESHSSH_ADMIN_TOKEN"),
        ("--mesh-prefix", "MESHSSH_POLICY_MESH_PREFIX"),
        ("--seed", "MESHSSH_POLICY_SEED"),
        ("--peer-offline-timeout", "MESHSSH_POLICY_PEER_OFFLINE_TIMEOUT"),
    ]
    for flag, env in settings:
        assert flag in out
        assert env in out


def test_a_bad_mesh_prefix_exits_2_naming_the_setting() -> None:
    result = run("--mesh-prefix", "100.64.0.1/10")
    assert result.returncode == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert "--mesh-prefix" in lines[0]
    assert "host bits set" in lines[0]


def test_a_short_admin_token_is_refused() -> None:
    result = run("--admin-token", "short")
    assert result.returncode == 2
    assert "--admin-token / MESHSSH_ADMIN_TOKEN" in result.err


async def test_a_bad_seed_file_exits_2_naming_the_field(
    tmp_path: Path, nats_url: str, services: ServiceFactory
) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text('{"groups": [{"name": "no id"}]}')
    proc = await services.start("meshssh-policy", "--nats-url", nats_url, "--seed", str(seed),
                                "--listen", "127.0.0.1:0", ready=False)  # fmt: skip
    assert await proc.proc.wait() == 2
    assert "groups[0].id: required in a seed" in proc.output()


async def test_without_an_admin_token_one_is_generated_and_logged_once(
    nats_url: str, services: ServiceFactory
) -> None:
    proc = await services.start("meshssh-policy", "--nats-url", nats_url,
                                "--listen", "127.0.0.1:0")  # fmt: skip
    lines = [line for line in proc.log if "admin_token=" in line]
    assert len(lines) == 1
    assert "generated one for this run" in lines[0]
