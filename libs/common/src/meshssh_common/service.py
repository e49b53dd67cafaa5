"""The service runner: signals, NATS, metrics, the ops HTTP server and a bounded shutdown.

A service contributes only ``serve(ctx)``: it runs until cancelled and sets ``ctx.ready`` once
its subscriptions and listeners are up. The runner owns everything else.

Lifecycle, in order:
1. the ops server starts (``/healthz`` answers at once; ``/readyz`` is 503);
2. NATS connects (retried until it succeeds, or until a signal);
3. ``serve(ctx)`` runs; ``/readyz`` is 200 while NATS is connected and ``ctx.ready`` is set.
   A ``serve`` that fails before it is ready because JetStream is not ready yet (a 503 such as
   "account not found" from a cluster node that has not loaded the account, no responders,
   a timeout) is started again, on a new connection so nothing of the failed start lingers,
   with backoff (0.2 s doubling to 5 s) for up to ``nats_start_timeout`` seconds; then it
   exits 1. Any other failure ends the service at once;
4. on SIGTERM/SIGINT: ``ctx.stopping`` is set and ``ctx.ready`` cleared, ``serve`` is cancelled
   and given ``shutdown_grace`` seconds to finish its cleanup, NATS is drained, the ops server
   stops. Exit code 0; 1 if ``serve`` crashed or overran the grace.

Example::

    def main() -> int:
        return service_main("relay", RelaySettings, serve)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshssh_common.connection import connect_nats
from meshssh_common.errors import ConfigError, MeshError, Unavailable
from meshssh_common.http_server import HttpServer
from meshssh_common.kv import set_default_replicas
from meshssh_common.logs import BoundLogger, configure_logging, service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.ops_http import ReadinessCheck, ops_app
from meshssh_common.settings import ServiceSettings, parse_settings

__all__ = [
    "ServiceContext",
    "jetstream_not_ready",
    "run_service",
    "service_main",
    "stop_on_signals",
]

# serve() tasks that overran the shutdown grace (see service_main).
_ABANDONED: set[asyncio.Task[int]] = set()
_NOT_READY = -1  # _guarded: serve failed before ready because JetStream was not ready
# nats-py raises ServiceUnavailableError for every JetStream 503 and for no responders.
_NOT_READY_ERRORS = (
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    Unavailable,
)
_FIRST_RETRY = 0.2
_MAX_RETRY = 5.0

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


@dataclass(slots=True)
class ServiceContext(Generic[S]):
    """What a service's ``serve`` gets: its settings, NATS, metrics, logger and ready flag.

    Generic in the settings class, so ``ctx.settings`` has the service's own type::

        async def serve(ctx: ServiceContext[RelaySettings]) -> None:
            ctx.settings.peer_id
    """

    name: str
    settings: S
    nc: NATS
    metrics: ServiceMetrics
    log: BoundLogger
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    ops_url: str = ""
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)  # more /readyz checks

    @property
    def js(self) -> JetStreamContext:
        """A JetStream context on the service's connection."""
        return self.nc.jetstream(timeout=self.settings.nats_request_timeout)


Serve = Callable[[ServiceContext[S]], Awaitable[None]]


async def run_service(
    name: str,
    settings: S,
    serve: Serve[S],
    *,
    metrics: ServiceMetrics | None = None,
    stop: asyncio.Event | None = None,
    checks: ReadinessCheck | None = None,
) -> int:
    """Run ``serve`` as service ``name`` until SIGTERM/SIGINT or ``stop`` is set.

    Args:
        name: the service name (``policy``, ``sshd``...): metric prefix and log field.
        settings: the parsed settings.
        serve: the service body.
        metrics: a metrics object to use (tests pass their own); created when None.
        stop: an event that stops the service like a signal (tests and embedding).
        checks: the service's own checks, added to ``nats`` and ``serving`` on ``/readyz``.

    Returns:
        0 on a clean stop; 1 when ``serve`` crashed or did not finish within the grace;
        2 when ``serve`` raised :class:`ConfigError` (e.g. its listen port is taken).
    """
    log = service_logger(name, settings.instance)
    set_default_replicas(settings.nats_replicas)  # what open_bucket creates with
    metrics = metrics or ServiceMetrics(name)
    stop = stop or asyncio.Event()
    signals = contextlib.ExitStack()
    signals.enter_context(stop_on_signals(stop))

    holder: dict[str, ServiceContext[S]] = {}

    def readiness() -> dict[str, bool]:
        ctx = holder.get("ctx")
        result = {
            "nats": bool(ctx and ctx.nc.is_connected),
            "serving": bool(ctx and ctx.ready.is_set() and not ctx.stopping.is_set()),
        }
        if ctx is not None:
            result.update({name: check() for name, check in ctx.checks.items()})
        if checks is not None:
            result.update(checks())
        metrics.ready.set(1 if all(result.values()) else 0)
        return result

    ops = HttpServer(
        ops_app(metrics.registry, readiness), settings.ops_listen, setting="--ops-listen"
    )
    log.info("ops listening", extra={"url": ops.url})
    metrics.up.set(1)
    exit_code = 0
    try:
        async with asyncio.TaskGroup() as tg:
            ops_task = tg.create_task(ops.serve())
            stopper = tg.create_task(stop.wait())
            deadline = time.monotonic() + settings.nats_start_timeout
            delay = _FIRST_RETRY
            while True:
                connect = tg.create_task(
                    connect_nats(
                        settings.nats_url,
                        name=f"{name}/{settings.instance}",
                        metrics=metrics,
                        log=log,
                        creds=settings.nats_creds,
                        ca=settings.nats_ca,
                    )
                )
                await asyncio.wait({connect, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not connect.done():
                    connect.cancel()
                    ops.stop()
                    return 0
                nc = connect.result()
                ctx = ServiceContext(name, settings, nc, metrics, log, ops_url=ops.url)
                holder["ctx"] = ctx
                # Not in the TaskGroup: a serve() that ignores cancellation must not hold the
                # shutdown past the grace (the TaskGroup would wait for it forever).
                main = asyncio.create_task(_guarded(serve, ctx))
                await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not (main.done() and main.result() == _NOT_READY) or stop.is_set():
                    break
                if time.monotonic() + delay > deadline:
                    log.error(
                        "JetStream not ready; giving up",
                        extra={"nats_start_timeout": settings.nats_start_timeout},
                    )
                    break
                log.warning("JetStream not ready; starting again", extra={"retry_in": delay})
                with contextlib.suppress(Exception):
                    await nc.close()  # what the failed start subscribed goes with it
                await asyncio.wait({stopper}, timeout=delay)
                delay = min(delay * 2, _MAX_RETRY)
            ctx.stopping.set()
            ctx.ready.clear()
            if main.done():
                exit_code = main.result()
                if exit_code == _NOT_READY:  # gave up, or stopped while it was not ready
                    exit_code = 0 if stop.is_set() else 1
            else:
                log.info("shutting down", extra={"grace": settings.shutdown_grace})
                main.cancel()
                done, _ = await asyncio.wait({main}, timeout=settings.shutdown_grace)
                if not done:
                    log.error("shutdown grace exceeded; abandoning serve()")
                    _ABANDONED.add(main)
                    exit_code = 1
            stopper.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(5.0, settings.shutdown_grace)):
                    await nc.drain()
            if not nc.is_closed:
                await nc.close()
            ops.stop()
            await ops_task
    finally:
        metrics.up.set(0)
        signals.close()
    log.info("stopped", extra={"exit_code": exit_code})
    return exit_code


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT while inside; the handlers are removed on the way out.

    ``add_signal_handler`` raises where the loop cannot take signals (not the main thread, as
    when a test embeds a service, or no signal support): the caller then stops through
    ``stop`` alone, which is why those errors are skipped.
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> asyncio.Task[T] | None:
    """Run ``work`` until it ends, or until ``stop`` is set or a SIGTERM/SIGINT comes.

    Returns:
        The finished task (its ``result()`` holds the value or raises its error), or None when
        stopped first: then ``work`` was cancelled, and a MeshError it ended with is dropped.
    """
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        with stop_on_signals(stop):
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, MeshError):
        await task
    return None


def jetstream_not_ready(error: BaseException) -> bool:
    """Whether ``error`` says JetStream is not ready yet, so a start may be tried again.

    That is a JetStream 503 (10035 "account not found" from a node that has not loaded the
    account yet, 10008 "temporarily unavailable", no responders), a timeout, or
    :class:`Unavailable`, possibly wrapped (``raise ... from``) or in an exception group whose
    every other member is a cancellation.
    """
    if isinstance(error, BaseExceptionGroup):
        leaves = [e for e in error.exceptions if not isinstance(e, asyncio.CancelledError)]
        return bool(leaves) and all(jetstream_not_ready(e) for e in leaves)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, nats.js.errors.APIError) and current.code == 503:
            return True
        if isinstance(
            current, Unavailable | nats.errors.TimeoutError | nats.errors.NoRespondersError
        ):
            return True
        current = current.__cause__
    return False


async def _guarded(serve: Serve[S], ctx: ServiceContext[S]) -> int:
    """Run ``serve``; its exit code: 0 ended or cancelled, 1 crashed, 2 bad setting.

    ``_NOT_READY`` when it failed before it was ready because JetStream was not (the runner
    starts it again).
    """
    try:
        await serve(ctx)
    except asyncio.CancelledError:
        return 0
    except ConfigError as e:
        ctx.log.error("bad setting", extra={"setting": e.setting, "problem": e.problem})
        sys.stderr.write(f"meshssh-{ctx.name}: bad setting {e}\n")
        return 2
    except Exception as e:
        if not ctx.ready.is_set() and jetstream_not_ready(e):
            ctx.log.warning("JetStream not ready at start", extra={"error": repr(e)})
            return _NOT_READY
        ctx.log.exception("service crashed")
        return 1
    return 0


def service_main(
    name: str,
    settings_cls: type[S],
    serve: Serve[S],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
) -> int:
    """The whole ``main()`` of a service: settings, logging, ``asyncio.run``, exit code.

    Returns:
        0 clean stop, 1 crash, 2 bad setting (one line on stderr naming it).
    """
    try:
        settings = parse_settings(
            settings_cls, argv, prog=f"meshssh-{name}", description=description
        )
    except ConfigError as e:
        sys.stderr.write(f"meshssh-{name}: bad setting {e}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner() as runner:
            code = runner.run(run_service(name, settings, serve))
            if _ABANDONED:
                # A serve() overran the grace and still runs: closing the loop would wait for
                # it. Exit now; the shutdown is bounded by design.
                logging.shutdown()
                os._exit(code)
            return code
    except ConfigError as e:
        sys.stderr.write(f"meshssh-{name}: bad setting {e}\n")
        return 2
    except KeyboardInterrupt:
        return 0
