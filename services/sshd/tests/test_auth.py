"""Authentication and authorization (SPEC §6): JWT as the password, the authorization table,
root, expired tokens, fail-closed maps, unknown kids, the rate limit, machine identity, and the
browser check against a real meshssh-authn, with OpenSSH and with paramiko."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import TYPE_CHECKING, Any

import paramiko
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import codec, subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.signed_doc import Verifier
from meshssh_common.version import VERSION
from meshssh_common.wire import AuditEvent, JwksRefreshReply, JwksSnapshot
from meshssh_testkit.signing import jwks_signer

if TYPE_CHECKING:
    from conftest import Authn, Issuer, Mesh, Sshd, SshdFactory


async def banner_of(sshd: Sshd, bind: str = "127.0.0.3") -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((bind, 0))
    try:
        await loop.sock_connect(sock, (sshd.host, sshd.port))
        data = b""
        async with asyncio.timeout(5):
            while b"\n" not in data:
                chunk = await loop.sock_recv(sock, 256)
                if not chunk:
                    break
                data += chunk
        return data
    finally:
        sock.close()


async def test_the_banner_says_meshssh_and_that_a_jwt_is_required(
    mesh: Mesh, sshd_factory: SshdFactory
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    assert await banner_of(sshd) == f"SSH-2.0-MeshSSH-{VERSION} MeshSSH-JWT-Required\r\n".encode()


async def test_a_user_whose_hash_is_not_in_the_table_is_refused_and_audited(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(grants=[("alice-id", "*")])
    sshd = await sshd_factory.start()
    result = await client_for(sshd).ssh("true", token=issuer.mint("mallory-id"), user=local_user)
    assert result.returncode == 255
    assert "Permission denied" in result.err
    assert "not authorized" in result.err
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert (event.reason, event.local_user, event.method) == (
        "not_authorized",
        local_user,
        "password",
    )
    assert event.source_addr.startswith("127.0.0.3:")
    assert sshd.metric("meshssh_sshd_auth_attempts_total", method="password", result="reject") == 1


async def test_a_user_mapped_only_to_alice_cannot_log_in_as_bob(
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    issuer: Issuer,
    local_user: str,
    other_user: str,
) -> None:
    await mesh.publish_map(grants=[("alice-id", local_user)])
    sshd = await sshd_factory.start()
    client = client_for(sshd)
    token = issuer.mint("alice-id")
    assert (await client.ssh("true", token=token, user=local_user)).returncode == 0
    refused = await client.ssh("true", token=token, user=other_user)
    assert refused.returncode == 255
    assert f"not authorized to log in as {other_user}" in refused.err


async def test_an_expired_token_is_refused_with_a_hint_to_log_in_again(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    expired = issuer.mint("alice-id", age=400, ttl=300)
    result = await client_for(sshd).ssh("true", token=expired, user=local_user)
    assert result.returncode == 255
    assert "expired" in result.err
    assert "meshssh login" in result.err
    assert "MeshSSH-Refusal: expired" in result.err  # the line meshssh's clients read
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert event.reason == "expired"


async def test_a_wrong_audience_is_named_in_the_banner_without_the_expected_value(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    token = issuer.mint("alice-id", aud="someone-else")
    result = await client_for(sshd).ssh("true", token=token, user=local_user)
    assert result.returncode == 255
    assert "MeshSSH-Refusal: bad_audience" in result.err
    assert "someone-else" not in result.err  # the detail stays in the server's log


async def test_root_is_refused_unless_the_peer_enables_it(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer
) -> None:
    await mesh.publish_map(grants=[("alice-id", "*")])
    locked = await sshd_factory.start()
    result = await client_for(locked).ssh("true", token=issuer.mint("alice-id"), user="root")
    assert result.returncode == 255
    assert "--enable-ssh-root" in result.err
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert event.reason == "root_disabled"
    opened = await sshd_factory.start(enable_ssh_root=True)
    result = await client_for(opened).ssh("id -u", token=issuer.mint("alice-id"), user="root")
    assert result.returncode == 0, result.err
    if result.out.strip() != "0":  # not running as root: sessions run as the service account
        assert opened.server.core is not None
        assert not opened.server.core.accounts.switching


async def test_a_map_without_jwt_config_fails_closed(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(with_jwt=False)
    sshd = await sshd_factory.start()
    result = await client_for(sshd).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert result.returncode == 255
    assert "identity-provider configuration" in result.err
    assert sshd.metric("meshssh_sshd_auth_rejects_total", reason="no_jwt_config") == 1


async def test_an_unknown_kid_triggers_one_refresh_and_then_succeeds(
    mesh: Mesh,
    nc: NATS,
    sshd_factory: SshdFactory,
    client_for: Any,
    local_user: str,
    new_issuer: Any,
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    rotated = new_issuer(kid="k2")
    kv = TypedKV(
        await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS),
        JwksSnapshot,
        signer=jwks_signer(),
        verifier=Verifier("jwks", jwks_signer().pins),
    )
    requests: list[str] = []

    # Stands in for authn's refresh endpoint: the test owns the signing keys, so it is the
    # "provider" that now publishes k2 next to k1.
    async def refresh(msg: Msg) -> None:
        requests.append(msg.data.decode())
        entry = await kv.get(subjects.JWKS_KEY)
        assert entry is not None
        both = (*entry.value.keys, *rotated.jwks())
        await kv.put(subjects.JWKS_KEY, JwksSnapshot(jwt=entry.value.jwt, keys=both))
        await msg.respond(codec.encode(JwksRefreshReply(fetched=True, key_ids=("k1", "k2"))))

    sub = await nc.subscribe(subjects.AUTHN_JWKS_REFRESH, cb=refresh)
    try:
        result = await client_for(sshd).ssh(
            "echo in", token=rotated.mint("alice-id"), user=local_user
        )
    finally:
        await sub.unsubscribe()
    assert result.returncode == 0, result.err
    assert len(requests) == 1
    assert '"kid":"k2"' in requests[0]
    assert sshd.metric("meshssh_sshd_jwks_refreshes_total", result="fetched") == 1


async def test_a_user_locked_out_from_one_source_still_logs_in_from_another(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(auth_failure_limit=2, auth_failure_source_limit=3)
    attacker = client_for(sshd)
    for _ in range(2):
        bad = await attacker.ssh("true", token="not-a-jwt", user=local_user)
        assert bad.returncode == 255
    # The failing source is refused for that user, even with a good token...
    good = await attacker.ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert good.returncode == 255
    assert "too many failed logins" in good.err
    assert sshd.metric("meshssh_sshd_auth_rejects_total", reason="rate_limited") >= 1
    # ...while the same user from another source gets in.
    other = client_for(sshd, bind="127.0.0.4")
    assert (await other.ssh("true", token=issuer.mint("alice-id"), user=local_user)).returncode == 0
    # One more failure (any user) takes the source over its source-wide limit: the gate then
    # closes its connections before the SSH banner.
    await attacker.ssh("true", token="not-a-jwt", user="nosuchuser")
    assert await banner_of(sshd) == b""
    assert sshd.metric("meshssh_sshd_connections_total", outcome="rate_limited") == 1


async def test_an_email_user_id_is_accepted_only_when_the_provider_verified_it(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map(claim="email", grants=[("alice@example.com", "*")])
    sshd = await sshd_factory.start()
    client = client_for(sshd)
    unverified = issuer.mint("alice-id", email="alice@example.com", email_verified=False)
    refused = await client.ssh("true", token=unverified, user=local_user)
    assert refused.returncode == 255
    assert "has not verified your email" in refused.err
    assert sshd.metric("meshssh_sshd_auth_rejects_total", reason="email_not_verified") == 1
    verified = issuer.mint("alice-id", email="alice@example.com", email_verified=True)
    assert (await client.ssh("true", token=verified, user=local_user)).returncode == 0


async def test_openssh_keyboard_interactive_accepts_a_pasted_token(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    client = client_for(sshd)
    result = await client.openssh.run(
        "ssh",
        "-p",
        str(sshd.port),
        f"{local_user}@{sshd.host}",
        "echo kbd",
        options=client.options(method="keyboard-interactive"),
        env=client.env(issuer.mint("alice-id")),
    )
    assert result.returncode == 0, result.err
    assert result.out == "kbd\n"
    assert "browser check is not available" in result.err  # no authn runs: paste only
    event = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert (event.method, event.jwt_user, event.local_user) == (
        "keyboard-interactive",
        "alice-id",
        local_user,
    )


async def test_machine_identity_mode_needs_no_token_but_keeps_the_root_rule(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, local_user: str
) -> None:
    await mesh.publish_map(with_jwt=False)
    sshd = await sshd_factory.start(disable_ssh_auth=True)
    assert await banner_of(sshd) == f"SSH-2.0-MeshSSH-{VERSION}\r\n".encode()
    client = client_for(sshd)
    assert (await client.ssh("exit 3", user=local_user)).returncode == 3
    refused = await client.ssh("true", user="root")
    assert refused.returncode == 255
    assert "--enable-ssh-root" in refused.err
    events = await mesh.audit_events(count=2)
    accepted = [e for e in events if e.kind == "auth-accepted"]
    assert accepted
    assert accepted[0].method == "none"


# -- paramiko: a client that is not OpenSSH -----------------------------------------------------


def paramiko_run(
    sshd: Sshd, user: str, command: str, *, password: str = "", handler: Any = None
) -> tuple[int, bytes]:
    sock = socket.create_connection(
        (sshd.host, sshd.port), timeout=10, source_address=("127.0.0.3", 0)
    )
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
        assert f"{key.get_name()} {key.get_base64()}" == sshd.host_key.public_line
        if handler is not None:
            transport.auth_interactive(user, handler)
        else:
            transport.auth_password(user, password)
        chan = transport.open_session(timeout=10)
        chan.exec_command(command)
        out = chan.makefile("rb").read()
        return chan.recv_exit_status(), out
    finally:
        transport.close()


async def test_paramiko_logs_in_with_a_token_as_its_password(
    mesh: Mesh, sshd_factory: SshdFactory, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start()
    status, out = await asyncio.to_thread(
        paramiko_run, sshd, local_user, "echo pm; exit 4", password=issuer.mint("alice-id")
    )
    assert (status, out) == (4, b"pm\n")
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(paramiko_run, sshd, local_user, "true", password="garbage")


async def test_the_browser_check_runs_a_device_flow_through_authn(
    bare_mesh: Mesh, authn: Authn, sshd_factory: SshdFactory, local_user: str
) -> None:
    mesh = bare_mesh
    await mesh.publish_map(grants=[("alice", local_user)], jwt=authn.snapshot.jwt)
    sshd = await sshd_factory.start()
    loop = asyncio.get_running_loop()
    shown: list[str] = []
    pages: list[str] = []

    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        shown.append(instructions)
        code = re.search(r"Code: (\S+)", instructions)
        assert code is not None, instructions
        page = asyncio.run_coroutine_threadsafe(authn.page(code[1]), loop)
        pages.append(page.result(timeout=15))
        approve = asyncio.run_coroutine_threadsafe(authn.approve(code[1]), loop)
        assert approve.result(timeout=15) == 200
        return ["" for _ in prompts]  # "press Enter once you have logged in"

    status, out = await asyncio.to_thread(
        paramiko_run, sshd, local_user, "echo browser", handler=handler
    )
    assert (status, out) == (0, b"browser\n")
    assert f"URL: {authn.issuer}" in shown[0]
    # The provider's page says what the code approves: this server, the local user, the source.
    for context in ("server-1", local_user, "127.0.0.3:"):
        assert context in pages[0], context
    event = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert (event.method, event.jwt_user) == ("keyboard-interactive", "alice")


async def test_the_browser_check_refuses_a_user_the_table_does_not_grant(
    bare_mesh: Mesh, authn: Authn, sshd_factory: SshdFactory, local_user: str
) -> None:
    await bare_mesh.publish_map(grants=[("someone-else", "*")], jwt=authn.snapshot.jwt)
    sshd = await sshd_factory.start()
    loop = asyncio.get_running_loop()

    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        code = re.search(r"Code: (\S+)", instructions)
        if code is not None:
            asyncio.run_coroutine_threadsafe(authn.approve(code[1]), loop).result(timeout=15)
        return ["" for _ in prompts]

    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(paramiko_run, sshd, local_user, "true", handler=handler)
    event: AuditEvent = await bare_mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert (event.reason, event.method) == ("not_authorized", "keyboard-interactive")
