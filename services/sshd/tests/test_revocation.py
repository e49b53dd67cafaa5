"""Live revocation (SPEC §6): a new map that withdraws a source, a user or SSH itself closes
the affected live sessions with "access revoked" within a second; other maps leave them be."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Client, Issuer, Mesh, SshdFactory


async def live_session(client: Client, token: str, user: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("echo up; exec sleep 30", user=user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **client.env(token)},
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"up\n"
    return proc


@pytest.mark.parametrize(
    ("change", "reason"),
    [("source", "source"), ("user", "user"), ("ssh_disabled", "ssh_disabled")],
)
async def test_a_policy_change_closes_a_live_session_within_a_second(
    change: str,
    reason: str,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
) -> None:
    await mesh.publish_map(grants=[("alice-id", local_user)])
    sshd = await sshd_factory.start()
    proc = await live_session(client_for(sshd), issuer.mint("alice-id"), local_user)
    started = time.monotonic()
    if change == "source":
        await mesh.publish_map(grants=[("alice-id", local_user)], rules=[mesh.rule("127.0.0.4/32")])
    elif change == "user":
        await mesh.publish_map(grants=[("alice-id", "someone-else")])
    else:
        await mesh.publish_map(grants=[("alice-id", local_user)], ssh_enabled=False)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    elapsed = time.monotonic() - started
    # Event-driven: the map change ends the session (no periodic re-check); the bound leaves
    # room for a loaded machine without letting a polling design pass.
    assert elapsed < 5.0, elapsed
    assert proc.returncode == 255
    assert b"access revoked" in err
    event = await mesh.wait_audit(lambda e: e.kind == "access-revoked")
    assert (event.reason, event.local_user, event.jwt_user) == (reason, local_user, "alice-id")
    assert sshd.metric("meshssh_sshd_policy_kicks_total", reason=reason) == 1


async def test_a_new_map_that_keeps_access_and_an_old_serial_change_nothing(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(grants=[("alice-id", "*")])
    sshd = await sshd_factory.start()
    proc = await live_session(client_for(sshd), issuer.mint("alice-id"), local_user)
    try:
        await mesh.publish_map(grants=[("alice-id", "*"), ("bob-id", "*")])  # still allowed
        serial = mesh.serial
        mesh.serial = 0  # a stale publisher: serial 1 < the current one
        await mesh.publish_map(grants=[])
        mesh.serial = serial
        await asyncio.sleep(0.5)
        assert proc.returncode is None
        assert sshd.server.core is not None
        assert sshd.server.core.maps.current is not None
        assert sshd.server.core.maps.current.serial == serial
    finally:
        proc.kill()
        await proc.wait()
    assert sshd.metric("meshssh_sshd_policy_kicks_total", reason="user") == 0
