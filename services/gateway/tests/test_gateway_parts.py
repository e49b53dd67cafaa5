"""The gateway's parts on their own: settings, resize frames, limits, ticket redemption."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from meshssh_common import codec, subjects
from meshssh_common.errors import ConfigError, Unavailable
from meshssh_common.settings import parse_settings
from meshssh_common.wire import TicketRedeem, TicketRefusal
from meshssh_gateway.session_limits import LimitReached, SessionLimits
from meshssh_gateway.settings import GatewaySettings
from meshssh_gateway.terminal import error_frame, exit_frame, resize_of
from meshssh_gateway.tickets import TicketDenied, redeem
from meshssh_testkit.process import run_command, script


def settings(*args: str) -> GatewaySettings:
    return parse_settings(GatewaySettings, ["--mesh-ip", "127.0.0.9", *args], prog="gw")


def test_allowed_origins_are_normalized_and_anything_but_an_origin_is_refused() -> None:
    s = settings("--allowed-origin", "https://Dash.Example.com/", "--allowed-origin", "http://a:8")
    assert s.allowed_origin == ("https://dash.example.com", "http://a:8")
    assert settings().allowed_origin == ()  # none: every WebSocket is refused
    for bad in ("dash.example.com", "https://dash.example.com/path", "ftp://x", "https://u@x"):
        with pytest.raises(ConfigError, match="allowed-origin"):
            settings("--allowed-origin", bad)
    with pytest.raises(ConfigError, match="mesh-ip"):
        parse_settings(GatewaySettings, [], prog="gw")


def test_only_well_formed_resize_frames_resize() -> None:
    assert resize_of('{"type": "resize", "cols": 132, "rows": 43}') == (132, 43)
    for text in (
        "not json",
        "[]",
        '{"type": "resize", "cols": 0, "rows": 43}',
        '{"type": "resize", "cols": 80, "rows": 100000}',
        '{"type": "resize", "cols": "80", "rows": 24}',
        '{"type": "resize", "cols": true, "rows": 24}',
        '{"type": "paste", "cols": 80, "rows": 24}',
    ):
        assert resize_of(text) is None, text
    assert exit_frame(3) == '{"type": "exit", "status": 3, "message": ""}'
    assert error_frame("access revoked") == '{"type": "error", "message": "access revoked"}'


def test_limits_hold_per_user_and_per_gateway_and_free_on_exit() -> None:
    limits = SessionLimits(per_user=2, total=3)
    with limits.take("alice"), limits.take("alice"):
        with pytest.raises(LimitReached) as per_user, limits.take("alice"):
            pass
        assert per_user.value.per_user
        assert "2 terminals open" in per_user.value.public
        with limits.take("bob"):
            assert limits.full()
            with pytest.raises(LimitReached) as total, limits.take("carol"):
                pass
            assert not total.value.per_user
    assert limits.open == 0
    assert limits.of("alice") == 0


async def test_redeeming_reaches_policys_subject_and_turns_refusals_into_clear_errors(
    nc: NATS,
) -> None:
    seen: list[TicketRedeem] = []

    async def policy(msg: object) -> None:  # a stand-in responder: policy's own is in e2e
        seen.append(codec.decode(msg.data, TicketRedeem))  # type: ignore[attr-defined]
        refusal = TicketRefusal(reason="unknown_ticket")
        await msg.respond(codec.encode(refusal))  # type: ignore[attr-defined]

    sub = await nc.subscribe(subjects.gateway_ticket("gw-1"), cb=policy)
    try:
        with pytest.raises(TicketDenied) as refused:
            await redeem(nc, "gw-1", "t" * 43, "cookie", "203.0.113.7")
        assert refused.value.refusal.reason == "unknown_ticket"
        assert "open a new terminal" in refused.value.public
        assert seen == [TicketRedeem(ticket="t" * 43, session="cookie", browser_addr="203.0.113.7")]
        with pytest.raises(TicketDenied) as malformed:  # refused before it is sent
            await redeem(nc, "gw-1", "t" * 500, "cookie", "")
        assert malformed.value.refusal.reason == "bad_request"
        assert len(seen) == 1
        with pytest.raises(Unavailable):
            await redeem(nc, "gw-2", "t" * 43, "cookie", "", timeout=1)
    finally:
        await sub.unsubscribe()


async def test_a_gateway_without_a_setup_key_or_a_management_url_exits_2(tmp_path: Path) -> None:
    for env, wanted in (
        ({"MESHSSH_SETUP_KEY": ""}, "required the first time"),
        ({"MESHSSH_SETUP_KEY": "k" * 20, "MESHSSH_MANAGEMENT_URL": ""}, "management-url"),
    ):
        result = await run_command(
            script("meshssh-gateway"),
            *("--mesh-ip", "127.0.0.9", "--state-dir", str(tmp_path / "state")),
            *("--management-url", "http://127.0.0.1:9")
            if "MESHSSH_MANAGEMENT_URL" not in env
            else (),
            env=env,
            timeout=30,
        )
        assert result.returncode == 2, result.err
        assert wanted in result.err
