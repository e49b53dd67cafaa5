"""``meshssh login`` as a user runs it, against a real meshssh-authn and its login page."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import httpx
import pytest

from meshssh_common.jwt_validation import JwtValidator
from meshssh_testkit import script

if TYPE_CHECKING:
    from conftest import Provider

    from meshssh_testkit.management import Management


async def start_login(*args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return await asyncio.create_subprocess_exec(
        script("meshssh"),
        "login",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def read_prompt(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """The ``URL: `` and ``Code: `` lines from stderr."""
    assert proc.stderr is not None
    url = code = ""
    async with asyncio.timeout(20):
        while not (url and code):
            line = (await proc.stderr.readline()).decode()
            assert line, "meshssh login ended before printing the URL and code"
            if line.startswith("URL: "):
                url = line.removeprefix("URL: ").strip()
            elif line.startswith("Code: "):
                code = line.removeprefix("Code: ").strip()
    return url, code


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_login_without_a_browser_prints_url_and_code_and_gets_a_valid_token(
    provider: Provider,
) -> None:
    proc = await start_login("--no-browser", "--issuer", provider.issuer, "--print-token")
    url, code = await read_prompt(proc)
    assert url == f"{provider.issuer}/device"
    assert len(code) == 9
    assert code[4] == "-"
    page = await provider.approve(code)
    assert page.status_code == 200
    rc, out, err = await finish(proc)
    assert rc == 0, err
    assert "Signed in" in err
    token = JwtValidator.from_snapshot(provider.snapshot).validate(out.strip())
    assert token.user_id == "alice"


async def test_login_finds_the_provider_through_the_management_url(
    provider: Provider, management: Management
) -> None:
    proc = await start_login(
        "--no-browser",
        "--management-url",
        management.api,
        "--print-token",
        "--ssh-jwt-cache-ttl",
        "300",
    )
    _, code = await read_prompt(proc)
    await provider.approve(code)
    rc, out, err = await finish(proc)
    assert rc == 0, err
    assert JwtValidator.from_snapshot(provider.snapshot).validate(out.strip()).user_id == "alice"


async def test_a_refused_sign_in_ends_the_login_with_a_clear_error(provider: Provider) -> None:
    proc = await start_login("--no-browser", "--issuer", provider.issuer, "--print-token")
    _, code = await read_prompt(proc)
    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(
            f"{provider.issuer}/device",
            data={
                "user_code": code,
                "username": "alice",
                "password": "alice-password-1",
                "action": "deny",
            },
        )
    rc, out, err = await finish(proc)
    assert rc == 1
    assert out == ""
    assert "the sign-in was refused" in err


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        ((), 2, "give --management-url"),
        (("--management-url", "http://127.0.0.1:9"), 1, "GET http://127.0.0.1:9/api/v1/auth"),
        (("--issuer", "http://127.0.0.1:9", "--ssh-jwt-cache-ttl", "-1"), 2, "0 or more"),
    ],
)
async def test_login_without_a_reachable_provider_says_what_is_wrong(
    args: tuple[str, ...], rc: int, message: str
) -> None:
    env_free = {k: v for k, v in os.environ.items() if k != "MESHSSH_MANAGEMENT_URL"}
    proc = await asyncio.create_subprocess_exec(
        script("meshssh"),
        "login",
        "--no-browser",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_free,
    )
    code, _, err = await finish(proc)
    assert code == rc
    assert message in err
