"""Request/reply over a real nats-server: typed errors travel, bad payloads are counted."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import wire
from meshssh_common.errors import Denied, NotFound, RemoteError, Unavailable, WireError
from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.rpc import add_endpoint, request, start_micro, subscribe_typed

SUBJECT = "meshssh.test.v1.req.echo"


async def serve_echo(nc: NATS, metrics: ServiceMetrics) -> object:
    svc = await start_micro(nc, "test")

    async def handle(req: wire.DevicePollRequest) -> wire.DevicePollReply:
        if req.device_code == "missing":
            raise NotFound(f"device code {req.device_code} unknown")
        if req.device_code == "deny":
            raise Denied("user bob not in table", public="access denied")
        if req.device_code == "boom":
            raise RuntimeError("bug")
        return wire.DevicePollReply(status="ok", token=req.device_code.upper())

    await add_endpoint(
        svc,
        "echo",
        SUBJECT,
        wire.DevicePollRequest,
        handle,
        metrics=metrics,
        log=service_logger("test"),
    )
    return svc


async def test_a_reply_decodes_into_its_type(nc: NATS) -> None:
    await serve_echo(nc, ServiceMetrics("test"))
    reply = await request(
        nc, SUBJECT, wire.DevicePollRequest(device_code="abc"), wire.DevicePollReply
    )
    assert reply == wire.DevicePollReply(status="ok", token="ABC")


async def test_an_error_raised_in_a_handler_reaches_the_requester_typed(nc: NATS) -> None:
    metrics = ServiceMetrics("test")
    await serve_echo(nc, metrics)
    with pytest.raises(NotFound, match="device code missing unknown") as info:
        await request(
            nc, SUBJECT, wire.DevicePollRequest(device_code="missing"), wire.DevicePollReply
        )
    assert info.value.code == "not_found"
    with pytest.raises(Denied) as denied:
        await request(nc, SUBJECT, wire.DevicePollRequest(device_code="deny"), wire.DevicePollReply)
    assert denied.value.public == "access denied"  # the logged reason never travels
    assert "bob" not in str(denied.value)
    assert metrics.requests.labels(endpoint="echo", result="not_found")._value.get() == 1


async def test_an_unexpected_exception_is_reported_as_internal_and_the_service_survives(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServiceMetrics("test")
    await serve_echo(nc, metrics)
    with caplog.at_level(logging.ERROR), pytest.raises(RemoteError) as info:
        await request(nc, SUBJECT, wire.DevicePollRequest(device_code="boom"), wire.DevicePollReply)
    assert getattr(info.value, "remote_code", None) == "internal"
    assert "bug" not in str(info.value)
    assert "request handler failed" in caplog.text
    ok = await request(nc, SUBJECT, wire.DevicePollRequest(device_code="x"), wire.DevicePollReply)
    assert ok.token == "X"


@pytest.mark.parametrize("payload", [b"\xff\xfe garbage", b'{"type":"authn.device-poll.v1"}'])
async def test_a_malformed_payload_is_rejected_counted_and_logged(
    nc: NATS, caplog: pytest.LogCaptureFixture, payload: bytes
) -> None:
    metrics = ServiceMetrics("test")
    await serve_echo(nc, metrics)
    with caplog.at_level(logging.WARNING):
        reply = await nc.request(SUBJECT, payload, timeout=2)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "bad_message"
    reason = "undecodable" if b"garbage" in payload else "invalid"
    assert metrics.bad_messages.labels(endpoint="echo", reason=reason)._value.get() == 1
    assert "rejected bad payload" in caplog.text
    ok = await request(nc, SUBJECT, wire.DevicePollRequest(device_code="y"), wire.DevicePollReply)
    assert ok.token == "Y"


async def test_no_responders_is_unavailable(nc: NATS) -> None:
    with pytest.raises(Unavailable, match="no responders"):
        await request(nc, "meshssh.nobody.v1.req.x", wire.MetaReply(), wire.MetaReply)


async def test_a_bad_reply_is_a_wire_error(nc: NATS) -> None:
    async def liar(msg: Msg) -> None:
        await msg.respond(b'{"type":"policy.meta-ack.v1","serial":"many"}')

    await nc.subscribe("meshssh.liar.v1.req.x", cb=liar)
    with pytest.raises(WireError):
        await request(nc, "meshssh.liar.v1.req.x", wire.MetaReply(), wire.MetaReply)


async def test_subscriber_drops_bad_events_and_keeps_going(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServiceMetrics("test")
    got: list[wire.Heartbeat] = []
    seen = asyncio.Event()

    async def on_hb(hb: wire.Heartbeat, _: Msg) -> None:
        got.append(hb)
        seen.set()

    log = service_logger("test")
    await subscribe_typed(
        nc,
        "meshssh.policy.v1.evt.heartbeat.*",
        wire.Heartbeat,
        on_hb,
        name="heartbeat",
        metrics=metrics,
        log=log,
    )
    with caplog.at_level(logging.WARNING):
        await nc.publish("meshssh.policy.v1.evt.heartbeat.p1", b"{{{")
        await nc.publish("meshssh.policy.v1.evt.heartbeat.p1", b'{"type":"policy.heartbeat.v1"}')
        await nc.publish(
            "meshssh.policy.v1.evt.heartbeat.p1",
            b'{"type":"policy.heartbeat.v1","peer_id":"p1","sent_at":2}',
        )
        async with asyncio.timeout(5):
            await seen.wait()
    assert got == [wire.Heartbeat(peer_id="p1", sent_at=2)]
    assert metrics.bad_messages.labels(endpoint="heartbeat", reason="undecodable")._value.get() == 1
    assert metrics.bad_messages.labels(endpoint="heartbeat", reason="invalid")._value.get() == 1
    assert caplog.text.count("dropped bad payload") == 2


async def test_a_concurrent_endpoint_answers_behind_a_request_that_waits(nc: NATS) -> None:
    svc = await start_micro(nc, "test")
    release = asyncio.Event()

    async def handle(req: wire.DevicePollRequest) -> wire.DevicePollReply:
        if req.device_code == "slow":
            await release.wait()  # a handler waiting for a rate limit or an upstream
        return wire.DevicePollReply(status="ok", token=req.device_code)

    await add_endpoint(
        svc,
        "echo",
        SUBJECT,
        wire.DevicePollRequest,
        handle,
        metrics=ServiceMetrics("test"),
        log=service_logger("test"),
        concurrency=4,
    )
    try:
        slow_req = wire.DevicePollRequest(device_code="slow")
        slow = asyncio.create_task(request(nc, SUBJECT, slow_req, wire.DevicePollReply, timeout=5))
        await asyncio.sleep(0.1)
        fast_req = wire.DevicePollRequest(device_code="fast")
        fast = await request(nc, SUBJECT, fast_req, wire.DevicePollReply, timeout=2)
        assert fast.token == "fast"
        assert not slow.done()
        release.set()
        assert (await slow).token == "slow"
    finally:
        await svc.stop()  # type: ignore[attr-defined]
