"""meshssh-policy as a process: its settings, and bad settings exiting 2 with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

from meshssh_testkit import NatsServer, RunResult, run_command_sync, script
from meshssh_testkit.plugin import ServiceFactory


def run(*args: str) -> RunResult:
    return run_command_sync(
        script("meshssh-policy"), *args, env={"PATH": "/usr/bin:/bin"}, replace_env=True, timeout=30
    )


def test_help_lists_every_policy_setting_with_its_env_variable() -> None:
    out = run("--help").out
    settings = [
        ("--listen", "MESHSSH_POLICY_LISTEN"),
        ("--admin-token", "MESHSSH_ADMIN_TOKEN"),
        ("--mesh-prefix", "MESHSSH_POLICY_MESH_PREFIX"),
        ("--seed", "MESHSSH_POLICY_SEED"),
        ("--peer-offline-timeout", "MESHSSH_POLICY_PEER_OFFLINE_TIMEOUT"),
        ("--bus-keys", "MESHSSH_BUS_KEYS"),
        ("--peer-creds-ttl", "MESHSSH_POLICY_PEER_CREDS_TTL"),
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


def test_a_peer_creds_ttl_over_a_day_is_refused() -> None:
    result = run("--peer-creds-ttl", "90000")
    assert result.returncode == 2
    assert "--peer-creds-ttl" in result.err


def bus_keys(server: NatsServer) -> str:
    """The test server's bus directory (``meshssh-policy init`` made it)."""
    assert server.keys is not None
    return str(server.keys.dir)


async def test_a_bus_directory_without_keys_exits_2_naming_it(
    tmp_path: Path, nats_server: NatsServer, services: ServiceFactory
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--listen",
        "127.0.0.1:0",
        "--bus-keys",
        str(empty),
        ready=False,
    )
    assert await proc.proc.wait() == 2
    assert "--bus-keys: cannot load the bus keys" in proc.output()


async def test_without_bus_keys_policy_exits_2_as_it_could_not_sign_maps(
    nats_server: NatsServer, services: ServiceFactory
) -> None:
    proc = await services.start(
        "meshssh-policy", *nats_server.flags("policy"), "--listen", "127.0.0.1:0", ready=False
    )
    assert await proc.proc.wait() == 2
    assert "--bus-keys: required: policy signs every network map" in proc.output()


async def test_an_older_bus_directory_exits_2_saying_what_to_run_and_init_fixes_it(
    tmp_path: Path, nats_server: NatsServer, services: ServiceFactory
) -> None:
    bus = tmp_path / "bus"
    shutil.copytree(bus_keys(nats_server), bus)
    for name in ("map-signing.pem", "jwks-signing.pem", "jwks-signing.pub"):
        (bus / name).unlink()
    flags = [*nats_server.flags("policy"), "--listen", "127.0.0.1:0", "--bus-keys", str(bus)]
    proc = await services.start("meshssh-policy", *flags, ready=False)
    assert await proc.proc.wait() == 2
    hint = f"run `meshssh-policy init --dir {bus} --rotate map-signing --rotate jwks-signing`"
    assert hint in proc.output()
    init = run_command_sync(
        script("meshssh-policy"),
        "init",
        "--dir",
        str(bus),
        "--rotate",
        "map-signing",
        "--rotate",
        "jwks-signing",
        timeout=30,
    )
    assert init.returncode == 0, init.err
    assert not (bus / "map-signing.pem.previous").exists()  # created, not rotated
    await services.start("meshssh-policy", *flags)  # ready


def test_a_short_admin_token_is_refused() -> None:
    result = run("--admin-token", "short")
    assert result.returncode == 2
    assert "--admin-token / MESHSSH_ADMIN_TOKEN" in result.err


async def test_a_bad_seed_file_exits_2_naming_the_field(
    tmp_path: Path, nats_server: NatsServer, services: ServiceFactory
) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text('{"groups": [{"name": "no id"}]}')
    proc = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--seed",
        str(seed),
        "--listen",
        "127.0.0.1:0",
        ready=False,
    )
    assert await proc.proc.wait() == 2
    assert "groups[0].id: required in a seed" in proc.output()


def _secret(path: Path) -> tuple[str, int, int]:
    """The token in ``path``, the file's mode and its directory's mode."""
    import stat

    token = path.read_text().strip()
    return token, stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_without_an_admin_token_one_is_generated_into_a_0600_file_never_into_the_log(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> None:
    import re

    from meshssh_common.fingerprint import fingerprint

    token_file = tmp_path / "private" / "admin-token"
    proc = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--listen",
        "127.0.0.1:0",
        "--admin-token-file",
        str(token_file),
        "--bus-keys",
        bus_keys(nats_server),
    )
    lines = [line for line in proc.log if "generated one for this run" in line]
    assert len(lines) == 1
    token, mode, dir_mode = _secret(token_file)
    assert len(token) >= 32
    assert (mode, dir_mode) == (0o600, 0o700)
    assert re.search(r"admin_token_sha256=.?" + re.escape(fingerprint(token)), lines[0])
    assert token not in proc.output()
    assert token.encode() not in _cmdline(proc.proc.pid)
    # A restart reads the same token from the file (and still logs only its fingerprint).
    await proc.stop()
    again = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--listen",
        "127.0.0.1:0",
        "--admin-token-file",
        str(token_file),
        "--bus-keys",
        bus_keys(nats_server),
    )
    assert any(fingerprint(token) in line for line in again.log)
    assert token not in again.output()
    assert _secret(token_file)[0] == token


async def test_without_a_token_or_a_file_the_token_goes_to_a_private_temp_file(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> None:
    import re
    import shutil

    proc = await services.start(
        "meshssh-policy",
        *nats_server.flags("policy"),
        "--listen",
        "127.0.0.1:0",
        "--bus-keys",
        bus_keys(nats_server),
    )
    lines = [line for line in proc.log if "generated one for this run" in line]
    assert len(lines) == 1
    found = re.search(r"path=.?(/\S+?/admin-token)", lines[0])
    assert found is not None, lines[0]
    path = Path(found[1])
    try:
        token, mode, dir_mode = _secret(path)
        assert token not in proc.output()
        assert (mode, dir_mode) == (0o600, 0o700)
    finally:
        shutil.rmtree(path.parent)
