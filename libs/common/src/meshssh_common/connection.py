"""Connecting to NATS with reconnects, connection-event metrics and logs.

The client reconnects forever (every 0.5 s); while it is away ``nc.is_connected`` is false,
which ``/readyz`` reports. The first connection is retried too, so a service can start
before nats-server does.

Example::

    nc = await connect_nats(settings.nats_url, name="sshd/node-1", metrics=m, log=log)

With a creds file, replies arrive under the identity's own inbox prefix
(``_INBOX_<user public key>``, the only inbox its permissions let it subscribe to). With a CA,
``tls://`` servers are verified against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from meshssh_common.bus_permissions import inbox_prefix
from meshssh_common.errors import ConfigError
from meshssh_common.logs import BoundLogger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.nats_jwt import read_creds

__all__ = ["NATS", "NatsEvent", "connect_nats"]


class _Refused(Exception):
    """The server refused the identity on the first connection (Authorization Violation)."""


class NatsEvent(enum.StrEnum):
    """A connection event (the ``event`` label of ``nats_events``)."""

    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    ERROR = "error"


async def connect_nats(
    url: str,
    *,
    name: str,
    metrics: ServiceMetrics | None = None,
    log: BoundLogger | None = None,
    creds: Path | None = None,
    ca: Path | None = None,
    retry_initial: bool = True,
    connect_timeout: float = 2.0,
) -> NATS:
    """Connect to NATS, retrying the first connection until it succeeds.

    Args:
        url: one or more server URLs, comma-separated.
        name: the client name shown in NATS monitoring.
        metrics: counts connection events and tracks the connected gauge.
        log: receives a line per connection event.
        creds: a NATS credentials file (the identity; see docs/security.md).
        ca: the CA certificate that signed the server's TLS certificate.
        retry_initial: keep trying the first connection (with backoff up to 2 s).
        connect_timeout: seconds per connection attempt.

    Returns:
        A connected client that reconnects forever.

    Raises:
        ConfigError: the creds file or the CA cannot be used.
    """
    options: dict[str, Any] = {}
    if creds is not None:
        try:
            options["inbox_prefix"] = inbox_prefix(read_creds(creds).public_key)
        except ValueError as e:
            raise ConfigError("--nats-creds", str(e)) from e
        options["user_credentials"] = str(creds)
    if ca is not None:
        try:
            options["tls"] = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("--nats-ca", f"cannot use {ca}: {e}") from e
    last_logged: dict[str, float] = {}

    def event(what: NatsEvent, detail: str = "") -> None:
        if metrics is not None:
            metrics.nats_events.labels(event=what).inc()
        # Reconnect attempts fail every 0.5 s during an outage: log each kind at most every 10 s.
        now = time.monotonic()
        if log is not None and now - last_logged.get(what, -1e9) >= 10.0:
            last_logged[what] = now
            log.warning("nats %s", what, extra={"detail": detail} if detail else {})

    holder: list[NATS] = []

    async def disconnected() -> None:
        if metrics is not None:
            metrics.nats_connected.set(0)
        if holder and (holder[0].is_draining or holder[0].is_closed):
            return  # our own drain on shutdown, not an outage
        event(NatsEvent.DISCONNECTED)

    async def reconnected() -> None:
        if metrics is not None:
            metrics.nats_connected.set(1)
        event(NatsEvent.RECONNECTED)

    async def error(e: Exception) -> None:
        if not holder and "authorization violation" in str(e).lower():
            # nats-py retries a refused first connection forever when reconnects are on;
            # raising here ends its connect loop (see below).
            raise _Refused(str(e)) from e
        event(NatsEvent.ERROR, repr(e))

    servers = [s.strip() for s in url.split(",") if s.strip()]
    connect_kw: dict[str, Any] = {
        "servers": servers,
        "name": name,
        **options,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": connect_timeout,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
    }
    delay = 0.1
    while True:
        nc = NATS()
        try:
            await nc.connect(**connect_kw)
        except _Refused as e:
            # a refused identity is not an outage: say so instead of retrying forever
            with contextlib.suppress(Exception):
                await nc.close()
            raise ConfigError("--nats-creds", f"the NATS server refused them: {e}") from e
        except (OSError, nats.errors.Error, TimeoutError) as e:
            if "authorization violation" in str(e).lower():
                raise ConfigError("--nats-creds", f"the NATS server refused them: {e}") from e
            if not retry_initial:
                raise
            if log is not None:
                log.warning(
                    "nats not reachable yet; retrying", extra={"url": url, "error": repr(e)}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        holder.append(nc)
        if metrics is not None:
            metrics.nats_connected.set(1)
        return nc
