"""A table open to every validated user (legacy TCP/22 rules, SPEC §6), with real OpenSSH.

A user the table never names logs in when the map opens it; root stays behind
``--enable-ssh-root``; the auth-accepted audit event carries the token's email and name (for
management's first-login record); and live revocation applies the same decision, so a session
that got in through the open table is closed once a map closes it.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Client, Issuer, Mesh, SshdFactory


async def live_session(client: Client, token: str, user: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *client.spawn_args("echo up; exec sleep 30", user=user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **client.env(token)},
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"up\n"
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def test_a_user_the_table_never_names_logs_in_when_it_is_open_to_validated_users(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(grants=[], open_to=["*"])
    sshd = await sshd_factory.start()
    token = issuer.mint("stranger-id", email="stranger@example.com", name="Stranger Danger")
    result = await client_for(sshd).ssh("echo in", token=token, user=local_user)
    assert (result.returncode, result.out.strip()) == (0, "in"), result.err
    event = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert (event.jwt_user, event.local_user) == ("stranger-id", local_user)
    assert (event.email, event.name) == ("stranger@example.com", "Stranger Danger")


async def test_an_open_table_still_needs_a_valid_token_and_the_root_flag(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    new_issuer: Any,
    local_user: str,
) -> None:
    await mesh.publish_map(grants=[], open_to=["*"])
    sshd = await sshd_factory.start()
    client = client_for(sshd)
    expired = await client.ssh("true", token=issuer.mint("stranger-id", age=900), user=local_user)
    assert expired.returncode == 255
    foreign = new_issuer(kid="k1").mint("stranger-id")  # same kid, a key nobody published
    refused = await client.ssh("true", token=foreign, user=local_user)
    assert refused.returncode == 255
    root = await client.ssh("true", token=issuer.mint("stranger-id"), user="root")
    assert root.returncode == 255
    assert "--enable-ssh-root" in root.err
    events = await mesh.audit_events(count=3)
    assert [e.kind for e in events] == ["auth-rejected"] * 3, events
    assert events[-1].reason == "root_disabled"


async def test_an_open_table_with_no_email_or_name_claims_audits_them_empty(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(grants=[], open_to=["*"])
    sshd = await sshd_factory.start()
    token = issuer.mint("plain-id", email=["not", "a", "string"], name="n" * 256)
    result = await client_for(sshd).ssh("true", token=token, user=local_user)
    assert result.returncode == 0, result.err
    event = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert (event.jwt_user, event.email, event.name) == ("plain-id", "", "")


async def test_a_session_let_in_by_the_open_table_is_revoked_when_a_map_closes_it(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(grants=[], open_to=["*"])
    sshd = await sshd_factory.start()
    proc = await live_session(client_for(sshd), issuer.mint("stranger-id"), local_user)
    try:
        # Another map that stays open (an ssh rule was added beside the legacy one): it stays.
        await mesh.publish_map(grants=[("bob-id", "root")], open_to=["*"])
        await asyncio.sleep(0.5)
        assert proc.returncode is None
        # The legacy rule is replaced by an ssh rule that names only bob: closed.
        await mesh.publish_map(grants=[("bob-id", "*")])
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 255
    assert b"access revoked" in err
    event = await mesh.wait_audit(lambda e: e.kind == "access-revoked")
    assert (event.reason, event.jwt_user) == ("user", "stranger-id")
    assert sshd.metric("meshssh_sshd_policy_kicks_total", reason="user") == 1
