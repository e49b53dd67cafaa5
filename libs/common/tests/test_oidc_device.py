"""The RFC 8628 client against a real HTTP server that answers as the test scripts it.

The provider here is scripted (each poll's answer is chosen by the test) so that every RFC
8628 answer can be exercised; real providers (oidc-provider-mock, glewlwyd, authn's own) are
driven through this client by the authn suite.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshssh_common.errors import Unavailable
from meshssh_common.http_server import HttpServer
from meshssh_common.oidc_device import (
    DEVICE_GRANT,
    DeviceFlowClient,
    DeviceFlowDenied,
    DeviceFlowExpired,
    Poll,
    discover_client_config,
    fetch_client_config,
)
from meshssh_common.wire import OidcClientConfig


@dataclass
class Provider:
    url: str
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    device: tuple[int, dict[str, Any]] = (200, {})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    state: dict[str, Provider] = {}

    async def discovery(request: Request) -> JSONResponse:
        p = state["p"]
        return JSONResponse(
            {
                "issuer": p.url,
                "token_endpoint": f"{p.url}/token",
                "device_authorization_endpoint": f"{p.url}/device",
            }
        )

    async def config(request: Request) -> JSONResponse:
        p = state["p"]
        return JSONResponse(
            {
                "issuer": p.url,
                "client_id": "meshssh",
                "device_authorization_endpoint": f"{p.url}/device",
                "token_endpoint": f"{p.url}/token",
            }
        )

    async def device(request: Request) -> JSONResponse:
        p = state["p"]
        p.forms.append({k: str(v) for k, v in (await request.form()).items()})
        status, body = p.device
        return JSONResponse(body, status_code=status)

    async def token(request: Request) -> JSONResponse:
        p = state["p"]
        p.forms.append({k: str(v) for k, v in (await request.form()).items()})
        status, body = p.answers.pop(0)
        return JSONResponse(body, status_code=status)

    app = Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/api/v1/auth/config", config),
            Route("/device", device, methods=["POST"]),
            Route("/token", token, methods=["POST"]),
        ]
    )
    server = HttpServer(app, "127.0.0.1:0")
    state["p"] = Provider(server.url)
    task = asyncio.create_task(server.serve())
    try:
        yield state["p"]
    finally:
        server.stop()
        async with asyncio.timeout(10):
            await task


def started(**extra: Any) -> tuple[int, dict[str, Any]]:
    return 200, {
        "device_code": "dc",
        "user_code": "BCDF-GHJK",
        "verification_uri": "https://idp/device",
        "interval": 2,
        **extra,
    }


async def run_flow(
    provider: Provider, config: OidcClientConfig | None = None
) -> tuple[Any, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with httpx.AsyncClient(timeout=5) as http:
        config = config or await discover_client_config(http, provider.url, "meshssh")
        flow = DeviceFlowClient(config, http, sleep=sleep)
        auth = await flow.start()
        try:
            return await flow.wait(auth), slept
        except Exception as e:
            return e, slept


async def test_discovery_then_pending_and_slow_down_then_the_token(provider: Provider) -> None:
    provider.device = started()
    provider.answers = [
        (400, {"error": "authorization_pending"}),
        (400, {"error": "slow_down"}),
        (400, {"error": "authorization_pending"}),
        (200, {"access_token": "at", "id_token": "it", "expires_in": 300}),
    ]
    tokens, slept = await run_flow(provider)
    assert (tokens.token, tokens.access_token, tokens.id_token, tokens.expires_in) == (
        "at",
        "at",
        "it",
        300,
    )
    assert slept == [2, 7, 7]  # slow_down adds 5 s for the rest of the flow
    device_form, *polls = provider.forms
    assert device_form == {"client_id": "meshssh", "scope": "openid email profile"}
    assert polls[0] == {"grant_type": DEVICE_GRANT, "device_code": "dc", "client_id": "meshssh"}


async def test_the_id_token_when_configured(provider: Provider) -> None:
    provider.device = started()
    provider.answers = [(200, {"access_token": "at", "id_token": "it"})]
    async with httpx.AsyncClient(timeout=5) as http:
        config = await discover_client_config(http, provider.url, "meshssh", use_id_token=True)
    tokens, _ = await run_flow(provider, config)
    assert tokens.token == "it"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"error": "access_denied"}, DeviceFlowDenied),
        ({"error": "expired_token"}, DeviceFlowExpired),
        ({"error": "invalid_grant"}, DeviceFlowExpired),
        ({"error": "unsupported_grant_type"}, Unavailable),
    ],
)
async def test_the_flow_ends_with_a_typed_error(
    provider: Provider, answer: dict[str, Any], error: type[Exception]
) -> None:
    provider.device = started()
    provider.answers = [(400, {"error": "authorization_pending"}), (400, answer)]
    result, _ = await run_flow(provider)
    assert type(result) is error


async def test_a_success_without_the_token_is_unavailable(provider: Provider) -> None:
    provider.device = started()
    provider.answers = [(200, {"id_token": "it"})]
    result, _ = await run_flow(provider)
    assert isinstance(result, Unavailable)


async def test_the_code_expires_on_the_clients_clock(provider: Provider) -> None:
    provider.device = started(expires_in=10)
    provider.answers = [(400, {"error": "authorization_pending"})] * 5
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async with httpx.AsyncClient(timeout=5) as http:
        config = await discover_client_config(http, provider.url, "meshssh")
        flow = DeviceFlowClient(config, http, sleep=sleep, clock=lambda: now[0])
        auth = await flow.start()
        with pytest.raises(DeviceFlowExpired):
            await flow.wait(auth)
    assert len(provider.forms) == 1 + 5  # polls at 0, 2, 4, 6 and 8 s; none at 10 s


async def test_one_poll_reports_the_status(provider: Provider) -> None:
    provider.answers = [(400, {"error": "slow_down"}), (403, {"error": "access_denied"})]
    async with httpx.AsyncClient(timeout=5) as http:
        flow = DeviceFlowClient(await fetch_client_config(http, provider.url), http)
        assert await flow.poll("dc") == Poll("slow_down")
        assert await flow.poll("dc") == Poll("denied")


@pytest.mark.parametrize(
    "device",
    [(400, {"error": "invalid_client"}), (200, {"user_code": "X"}), (200, ["not", "an", "object"])],
)
async def test_a_bad_device_authorization_answer_is_unavailable(
    provider: Provider, device: tuple[int, Any]
) -> None:
    provider.device = device
    async with httpx.AsyncClient(timeout=5) as http:
        flow = DeviceFlowClient(await discover_client_config(http, provider.url, "c"), http)
        with pytest.raises(Unavailable):
            await flow.start()


async def test_an_unreachable_provider_is_unavailable(provider: Provider) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with httpx.AsyncClient(timeout=5) as http:
            with pytest.raises(Unavailable):
                await discover_client_config(http, nowhere, "c")
            with pytest.raises(Unavailable):
                await fetch_client_config(http, provider.url + "/nowhere")
