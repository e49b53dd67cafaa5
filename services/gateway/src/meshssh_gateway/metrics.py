"""The gateway's Prometheus metrics (``meshssh_gateway_*``), label values bounded by enums.

- ``sessions_open``: terminals open now;
- ``sessions_total{result}``: terminals that ended, by :class:`SessionResult`;
- ``refusals_total{reason}``: WebSockets refused before a terminal opened, by :class:`Refusal`;
- ``bytes_total{direction}``: terminal bytes, ``in`` (browser → peer) and ``out``;
- ``backpressure_pauses_total``: times a terminal stopped reading its SSH channel because the
  browser did not keep up;
- ``creds_renewals_total{outcome}``, ``creds_expiry_timestamp_seconds``: the bus identity;
- ``audit_events_total{result}``, ``setup_seconds``: audit publishing, terminal set-up time.

Example::

    m = GatewayMetrics(ctx.metrics)
    m.refusals.labels(reason=Refusal.ORIGIN).inc()
"""

from __future__ import annotations

import enum

from meshssh_common.metrics import ServiceMetrics

__all__ = ["GatewayMetrics", "Refusal", "SessionResult"]


class Refusal(enum.StrEnum):
    """Why a WebSocket got no terminal (``refusals_total{reason}``)."""

    ORIGIN = "origin"  # Origin not in --allowed-origin (403 before the upgrade)
    NO_TICKET = "no_ticket"  # no ticket in the URL (403 before the upgrade)
    TICKET = "ticket"  # policy refused the ticket (unknown, used, expired, other session)
    LIMIT_USER = "limit_user"  # --max-sessions-per-user reached
    LIMIT_GATEWAY = "limit_gateway"  # --max-sessions reached
    TOKEN = "token"  # authn refused the exchange
    TARGET = "target"  # the target is not in the gateway's map, or has no pinned key
    SSH_DENIED = "ssh_denied"  # the target's sshd refused the login
    UNREACHABLE = "unreachable"  # no TCP, timeout, bus or policy/authn unavailable
    BAD_REQUEST = "bad_request"  # a malformed first frame or size


class SessionResult(enum.StrEnum):
    """How a terminal ended (``sessions_total{result}``)."""

    EXITED = "exited"  # the shell exited (status sent to the browser)
    REVOKED = "revoked"  # the target's sshd closed it: access revoked
    IDLE = "idle"  # --idle-timeout
    BROWSER_CLOSED = "browser_closed"  # the WebSocket went away first
    CLOSED = "closed"  # the SSH connection ended for another reason
    SHUTDOWN = "shutdown"  # the gateway stops


class GatewayMetrics:
    """The gateway's own metrics on the service registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.sessions_open = metrics.gauge("sessions_open", "Browser terminals open now")
        self.sessions = metrics.counter(
            "sessions", "Browser terminals that ended, by result", ("result",)
        )
        self.refusals = metrics.counter(
            "refusals", "WebSockets refused before a terminal opened, by reason", ("reason",)
        )
        self.bytes = metrics.counter(
            "bytes", "Terminal bytes: in = browser to peer, out = peer to browser", ("direction",)
        )
        self.backpressure_pauses = metrics.counter(
            "backpressure_pauses",
            "Times a terminal stopped reading its SSH channel (the browser was slow)",
        )
        self.setup_seconds = metrics.histogram(
            "setup_seconds",
            "Ticket, token exchange and SSH login of a terminal that opened",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.renewals = metrics.counter(
            "creds_renewals", "Renewals of the gateway's NATS JWT, by outcome", ("outcome",)
        )
        self.creds_expiry = metrics.gauge(
            "creds_expiry_timestamp_seconds", "When the gateway's NATS JWT expires (0: never)"
        )
        self.audit = metrics.counter(
            "audit_events", "Audit events: published, retried, failed, dropped", ("result",)
        )
        for reason in Refusal:
            self.refusals.labels(reason=reason)
        for result in SessionResult:
            self.sessions.labels(result=result)
        for direction in ("in", "out"):
            self.bytes.labels(direction=direction)
