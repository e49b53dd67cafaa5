"""The embedded OIDC provider end to end: device flow, login form, tokens validated from KV."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import msgspec
import pytest

from meshssh_common import subjects
from meshssh_common.errors import BadRequest, Denied
from meshssh_common.jwt_validation import JwtValidator, RejectReason, TokenRejected
from meshssh_common.rpc import request
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
)
from meshssh_testkit import NatsServer
from meshssh_testkit.plugin import ServiceFactory

if TYPE_CHECKING:
    from conftest import AuthnFactory, Browser, Kv

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


async def poll(http: httpx.AsyncClient, token_url: str, device_code: str) -> httpx.Response:
    return await http.post(
        token_url,
        data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": "meshssh"},
    )


async def test_device_flow_through_the_login_form_gives_a_token_the_validator_accepts_from_kv(
    nats_server: NatsServer,
    services: ServiceFactory,
    users_file: Path,
    kv: Kv,
    browser: Browser,
    passwords: dict[str, str],
) -> None:
    await services.start(
        "meshssh-authn",
        *nats_server.authn_flags(),
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        str(users_file),
        "--device-poll-interval",
        "0",
    )
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    issuer = snap.client.issuer
    async with httpx.AsyncClient(timeout=10) as http:
        meta = (await http.get(f"{issuer}/.well-known/openid-configuration")).json()
        assert meta["issuer"] == issuer
        assert meta["device_authorization_endpoint"] == snap.client.device_authorization_endpoint
        jwks = (await http.get(meta["jwks_uri"])).json()
        assert {k["kid"] for k in jwks["keys"]} == {k["kid"] for k in snap.keys}

        started = (
            await http.post(meta["device_authorization_endpoint"], data={"client_id": "meshssh"})
        ).json()
        pending = await poll(http, meta["token_endpoint"], started["device_code"])
        assert (pending.status_code, pending.json()["error"]) == (400, "authorization_pending")

        page = await browser.sign_in(
            started["verification_uri"], started["user_code"], "alice", passwords["alice"]
        )
        assert page.status_code == 200
        assert "You are signed in" in page.text

        issued = await poll(http, meta["token_endpoint"], started["device_code"])
        assert issued.status_code == 200
        assert issued.headers["cache-control"] == "no-store"
        body = issued.json()
        again = await poll(http, meta["token_endpoint"], started["device_code"])
        assert again.json()["error"] == "expired_token"  # a device code yields one token

    token = (await kv.validator()).validate(body["access_token"])
    assert token.user_id == "alice"
    assert token.claims["email"] == "alice@example.com"
    assert token.claims["name"] == "Alice"
    assert token.claims["groups"] == ["dev"]
    assert token.claims["iss"] == issuer
    assert token.kid == jwt.get_unverified_header(body["access_token"])["kid"]
    assert token.expires_at - token.issued_at == 600
    assert jwt.decode(body["id_token"], options={"verify_signature": False})["aud"] == "meshssh"


async def test_a_wrong_password_is_refused_counted_and_leaves_the_code_usable(
    authn: AuthnFactory, users_file: Path, kv: Kv, browser: Browser, passwords: dict[str, str]
) -> None:
    replica = await authn.start("--users-file", str(users_file), "--device-poll-interval", "0")
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    async with httpx.AsyncClient(timeout=10) as http:
        started = (
            await http.post(
                snap.client.device_authorization_endpoint, data={"client_id": "meshssh"}
            )
        ).json()
        wrong = await browser.sign_in(
            started["verification_uri"], started["user_code"], "alice", "not-her-password"
        )
        assert wrong.status_code == 401
        assert "Wrong user name or password" in wrong.text
        assert wrong.headers["x-frame-options"] == "DENY"
        nobody = await browser.sign_in(
            started["verification_uri"], started["user_code"], "mallory", "whatever-password"
        )
        assert nobody.status_code == 401  # same answer for an unknown name
        bad_code = await browser.sign_in(
            started["verification_uri"], "BBBB-BBBB", "alice", passwords["alice"]
        )
        assert bad_code.status_code == 400
        still = await poll(http, snap.client.token_endpoint, started["device_code"])
        assert still.json()["error"] == "authorization_pending"
        # The user code is accepted in any case and without its dash.
        ok = await browser.sign_in(
            started["verification_uri"],
            started["user_code"].lower().replace("-", ""),
            "bob",
            passwords["bob"],
        )
        assert ok.status_code == 200
        done = await poll(http, snap.client.token_endpoint, started["device_code"])
        assert (
            jwt.decode(done.json()["access_token"], options={"verify_signature": False})["sub"]
            == "bob"
        )
    failures = "meshssh_authn_login_failures_total"
    assert replica.sample(failures, {"reason": "bad_credentials"}) == 2
    # The bad code was looked up twice: by the confirm page and by the form.
    assert replica.sample(failures, {"reason": "unknown_code"}) == 2
    assert replica.sample("meshssh_authn_tokens_issued_total") == 1


async def test_deny_on_the_login_page_makes_the_poll_answer_access_denied(
    authn: AuthnFactory, users_file: Path, kv: Kv, browser: Browser, passwords: dict[str, str]
) -> None:
    await authn.start("--users-file", str(users_file), "--device-poll-interval", "0")
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    async with httpx.AsyncClient(timeout=10) as http:
        started = (
            await http.post(
                snap.client.device_authorization_endpoint, data={"client_id": "meshssh"}
            )
        ).json()
        page = await browser.sign_in(
            started["verification_uri"],
            started["user_code"],
            "alice",
            passwords["alice"],
            action="deny",
        )
        assert "denied" in page.text
        denied = await poll(http, snap.client.token_endpoint, started["device_code"])
        assert denied.json()["error"] == "access_denied"


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (
            {"grant_type": "password", "device_code": "x", "client_id": "meshssh"},
            400,
            "unsupported_grant_type",
        ),
        ({"grant_type": DEVICE_GRANT, "client_id": "meshssh"}, 400, "invalid_request"),
        (
            {"grant_type": DEVICE_GRANT, "device_code": "x", "client_id": "other"},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": DEVICE_GRANT, "device_code": "garbage", "client_id": "meshssh"},
            400,
            "expired_token",
        ),
    ],
)
async def test_the_token_endpoint_answers_bad_requests_with_oauth_errors(
    authn: AuthnFactory, kv: Kv, data: dict[str, str], status: int, error: str
) -> None:
    await authn.start()
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(snap.client.token_endpoint, data=data)
        unknown = await http.post(
            snap.client.device_authorization_endpoint, data={"client_id": "intruder"}
        )
    assert (resp.status_code, resp.json()["error"]) == (status, error)
    assert (unknown.status_code, unknown.json()["error"]) == (401, "invalid_client")


async def test_the_nats_device_broker_runs_a_browser_check_for_an_ssh_server(
    authn: AuthnFactory,
    users_file: Path,
    kv: Kv,
    browser: Browser,
    passwords: dict[str, str],
    nats_server: NatsServer,
) -> None:
    await authn.start("--users-file", str(users_file), "--device-poll-interval", "0")
    await kv.wait_snapshot()
    nc = await nats_server.connect(nats_server.peer_creds("server-1"))  # as an SSH server
    try:
        start = DeviceStartRequest(peer_id="server-1")
        started = await request(nc, subjects.device_start("server-1"), start, DeviceStartReply)
        poll_req = DevicePollRequest(device_code=started.device_code)
        first = await request(nc, subjects.device_poll("server-1"), poll_req, DevicePollReply)
        assert first.status == "pending"
        assert started.verification_uri_complete.endswith(started.user_code)
        await browser.sign_in(started.verification_uri, started.user_code, "bob", passwords["bob"])
        other = await nats_server.connect(nats_server.peer_creds("server-2"))
        try:  # a peer that learnt the code cannot collect bob's approval (nor a token for itself)
            with pytest.raises(Denied, match="no browser check of this server"):
                await request(other, subjects.device_poll("server-2"), poll_req, DevicePollReply)
        finally:
            await other.close()
        done = await request(nc, subjects.device_poll("server-1"), poll_req, DevicePollReply)
        after = await request(nc, subjects.device_poll("server-1"), poll_req, DevicePollReply)
        with pytest.raises(BadRequest):
            await request(
                nc,
                subjects.device_poll("server-1"),
                DevicePollRequest(device_code=""),
                DevicePollReply,
            )
        foreign = DeviceStartRequest(peer_id="server-2")  # a token that would work elsewhere
        with pytest.raises(Denied, match="only for itself"):
            await request(nc, subjects.device_start("server-1"), foreign, DeviceStartReply)
    finally:
        await nc.close()
    assert done.status == "ok"
    assert after.status == "expired"
    # the browser-checked token is a per-peer token for the server that started the check
    snap = await kv.wait_snapshot()
    (exchange_key,) = snap.exchange_keys
    assert jwt.get_unverified_header(done.token)["kid"] == exchange_key["kid"]
    claims = jwt.decode(
        done.token,
        jwt.PyJWK(exchange_key).key,
        algorithms=["EdDSA"],
        audience="meshssh:peer:server-1",
        issuer=snap.exchange_issuer,
    )
    assert claims["sub"] == "bob"
    assert claims["exp"] - claims["iat"] <= 120 + 5
    assert len(claims["jti"]) == 22


async def test_polling_faster_than_the_interval_is_told_to_slow_down(
    authn: AuthnFactory, kv: Kv
) -> None:
    await authn.start("--device-poll-interval", "5")
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    async with httpx.AsyncClient(timeout=10) as http:
        started = (
            await http.post(
                snap.client.device_authorization_endpoint, data={"client_id": "meshssh"}
            )
        ).json()
        assert started["interval"] == 5
        first = await poll(http, snap.client.token_endpoint, started["device_code"])
        second = await poll(http, snap.client.token_endpoint, started["device_code"])
    assert first.json()["error"] == "authorization_pending"
    assert second.json()["error"] == "slow_down"


async def test_a_token_for_another_audience_or_issuer_is_refused_by_the_kv_validator(
    authn: AuthnFactory, users_file: Path, kv: Kv, browser: Browser, passwords: dict[str, str]
) -> None:
    await authn.start(
        "--users-file",
        str(users_file),
        "--device-poll-interval",
        "0",
        "--audience",
        "meshssh",
        "--audience",
        "meshssh-cli",
    )
    snap = await kv.wait_snapshot()
    assert snap.jwt.audiences == ("meshssh", "meshssh-cli")
    validator = await kv.validator()
    assert snap.client is not None
    async with httpx.AsyncClient(timeout=10) as http:
        started = (
            await http.post(
                snap.client.device_authorization_endpoint, data={"client_id": "meshssh"}
            )
        ).json()
        await browser.sign_in(
            started["verification_uri"], started["user_code"], "alice", passwords["alice"]
        )
        body: dict[str, Any] = (
            await poll(http, snap.client.token_endpoint, started["device_code"])
        ).json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == ["meshssh", "meshssh-cli"]
    assert validator.validate(body["access_token"]).user_id == "alice"
    for config, reason in (
        (msgspec.structs.replace(snap.jwt, audiences=("other",)), RejectReason.BAD_AUDIENCE),
        (msgspec.structs.replace(snap.jwt, issuer="https://idp.example"), RejectReason.BAD_ISSUER),
    ):
        with pytest.raises(TokenRejected) as refused:
            JwtValidator(config, snap.keys).validate(body["access_token"])
        assert refused.value.reason == reason


async def test_live_rotation_publishes_each_key_in_kv_before_any_token_carries_it(
    authn: AuthnFactory, users_file: Path, kv: Kv, browser: Browser, passwords: dict[str, str]
) -> None:
    replica = await authn.start(
        "--users-file",
        str(users_file),
        "--device-poll-interval",
        "0",
        "--signing-alg",
        "ES256",
        "--key-rotation",
        "1.5",
        "--key-publish-lead",
        "0.7",
        "--clock-skew",
        "0",
    )
    snap = await kv.wait_snapshot()
    assert snap.client is not None
    seen_kids: list[str] = []
    tokens: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http, asyncio.timeout(30):
        while len(set(seen_kids)) < 3:  # three keys have signed: two rotations
            started = (
                await http.post(
                    snap.client.device_authorization_endpoint, data={"client_id": "meshssh"}
                )
            ).json()
            await browser.sign_in(
                started["verification_uri"], started["user_code"], "alice", passwords["alice"]
            )
            published = {str(k["kid"]) for k in (await kv.wait_snapshot()).keys}
            body = (await poll(http, snap.client.token_endpoint, started["device_code"])).json()
            kid = jwt.get_unverified_header(body["access_token"])["kid"]
            assert kid in published  # in KV before the token that carries it existed
            seen_kids.append(kid)
            tokens.append(body["access_token"])
            await asyncio.sleep(0.2)
    # The newest token validates with what KV holds now; rotation was counted.
    assert (await kv.validator()).validate(tokens[-1]).user_id == "alice"
    assert replica.sample("meshssh_authn_signing_key_rotations_total") >= 3
