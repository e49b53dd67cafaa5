"""Typed request/reply and subscriptions over NATS, with error codes in headers.

Serving: :func:`add_endpoint` registers a typed handler on a ``nats.micro`` service (queue
group = service name, so replicas share the load, and ``$SRV.PING/INFO/STATS`` work). A payload
that does not decode is rejected with ``bad_message``, counted and logged; a
:class:`MeshError` raised by the handler reaches the requester with its code; anything else is
logged with its traceback and reported as ``internal``. A handler never crashes the service.

Requesting: :func:`request` encodes, sends, and raises the typed error named by the reply's
``Nats-Service-Error-Code`` header.

Example::

    svc = await start_micro(ctx, "policy")
    await add_endpoint(ctx, svc, "meta", subjects.POLICY_META, MetaUpdate, handle)
    reply = await request(nc, subjects.POLICY_META, req, MetaReply)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import Service

from meshssh_common import codec
from meshssh_common.errors import MeshError, WireError, error_for_code, nats_boundary
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.tasks import TaskSet
from meshssh_common.version import VERSION

__all__ = ["add_endpoint", "add_subject_endpoint", "request", "start_micro", "subscribe_typed"]

Req = TypeVar("Req")
Rep = TypeVar("Rep")


async def request(
    nc: NATS, subject: str, msg: Any, reply_type: type[Rep], *, timeout: float = 2.0
) -> Rep:
    """Send ``msg`` on ``subject`` and decode the reply as ``reply_type``.

    Raises:
        Unavailable: no responders, or no reply within ``timeout``.
        WireError: the reply does not decode.
        MeshError: the typed error the responder raised (by its code).
    """
    with nats_boundary(subject):
        reply = await nc.request(subject, codec.encode(msg), timeout=timeout)
    headers = reply.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise error_for_code(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""))
    return codec.decode(reply.data, reply_type)


async def start_micro(nc: NATS, service: str, *, description: str = "") -> Service:
    """Register this process as an instance of the ``nats.micro`` service ``service``."""
    return await add_service(
        nc,
        name=f"meshssh-{service}",
        version=VERSION,
        description=description or f"meshssh {service}",
        queue_group=service,
    )


async def add_endpoint(
    svc: Service,
    name: str,
    subject: str,
    req_type: type[Req],
    handler: Callable[[Req], Awaitable[Any]],
    *,
    metrics: ServiceMetrics,
    log: BoundLogger,
    concurrency: int = 1,
) -> None:
    """Serve ``subject`` with a typed ``handler`` (its return value is encoded as the reply).

    Args:
        svc: from :func:`start_micro`; its queue group is the service name.
        name: endpoint name, used as a bounded metric label.
        subject: the request subject.
        req_type: what the request payload must decode into.
        handler: called with the decoded request; raises :class:`MeshError` to refuse.
        metrics: counts requests, bad messages and latency.
        log: receives bad-message and failure lines.
        concurrency: how many requests this replica handles at once; 1 (the default)
            answers them one after the other. Above 1, a handler that waits (for a rate
            limit, a slow upstream) does not hold up the requests behind it; when all are
            busy the subscription waits.
    """

    async def call(payload: Req, _subject: str) -> Any:
        return await handler(payload)

    await add_subject_endpoint(
        svc, name, subject, req_type, call, metrics=metrics, log=log, concurrency=concurrency
    )


async def add_subject_endpoint(
    svc: Service,
    name: str,
    subject: str,
    req_type: type[Req],
    handler: Callable[[Req, str], Awaitable[Any]],
    *,
    metrics: ServiceMetrics,
    log: BoundLogger,
    concurrency: int = 1,
) -> None:
    """:func:`add_endpoint` for a wildcard ``subject``: the handler also gets the subject.

    The subject a request came in on is where the bus's permissions vouch for the sender
    (``...token-exchange.<requesting peer>``), so handlers read the requester from it.
    """

    async def handle(req: Request) -> None:
        started = time.perf_counter()
        try:
            try:
                payload = codec.decode(req.data, req_type)
            except WireError as e:
                metrics.bad_messages.labels(endpoint=name, reason=e.reason).inc()
                log.warning("rejected bad payload", extra={"endpoint": name, "error": str(e)})
                raise
            result = await handler(payload, req.subject)
            await req.respond(codec.encode(result))
            metrics.requests.labels(endpoint=name, result="ok").inc()
        except MeshError as e:
            metrics.requests.labels(endpoint=name, result=e.code).inc()
            if not isinstance(e, WireError):
                log.info(
                    "request refused", extra={"endpoint": name, "code": e.code, "error": str(e)}
                )
            await req.respond_error(e.code, e.public)
        except Exception:
            metrics.requests.labels(endpoint=name, result="internal").inc()
            log.exception("request handler failed", extra={"endpoint": name})
            await req.respond_error("internal", "internal error")
        finally:
            metrics.request_seconds.labels(endpoint=name).observe(time.perf_counter() - started)

    if concurrency <= 1:
        await svc.add_endpoint(name=name, subject=subject, handler=handle)
        return
    slots = asyncio.Semaphore(concurrency)
    running = TaskSet(log)  # handle() answers every failure itself; a bug is still logged

    async def dispatch(req: Request) -> None:
        await slots.acquire()
        running.spawn(handle(req), name).add_done_callback(lambda _: slots.release())

    await svc.add_endpoint(name=name, subject=subject, handler=dispatch)


async def subscribe_typed(
    nc: NATS,
    subject: str,
    msg_type: type[Req],
    handler: Callable[[Req, Msg], Awaitable[None]],
    *,
    name: str,
    metrics: ServiceMetrics,
    log: BoundLogger,
    queue: str = "",
) -> Subscription:
    """Subscribe to published events, decoding each into ``msg_type`` before ``handler``.

    A bad payload is counted (``bad_messages{endpoint=name}``), logged and dropped; a failing
    handler is logged; neither ends the subscription.
    """

    async def on_msg(msg: Msg) -> None:
        try:
            payload = codec.decode(msg.data, msg_type)
        except WireError as e:
            metrics.bad_messages.labels(endpoint=name, reason=e.reason).inc()
            log.warning(
                "dropped bad payload",
                extra={"endpoint": name, "subject": msg.subject, "error": str(e)},
            )
            return
        try:
            await handler(payload, msg)
        except Exception:
            log.exception("event handler failed", extra={"endpoint": name, "subject": msg.subject})

    return await nc.subscribe(subject, queue=queue, cb=on_msg)
