"""The ``meshssh_agent_*`` metrics, beside the runner's own (up, ready, NATS, bad messages).

- ``map_serial``: the serial of the network map the agent holds (0: none);
- ``map_age_seconds``: since the agent last applied a map (0 before the first);
- ``child_restarts_total{child}``: sshd or relay restarted after an unexpected exit;
- ``dropin_writes_total``: OpenSSH drop-in writes that changed the file;
- ``token_cache_lookups_total{result}``: ``hit`` or ``miss`` on the agent socket;
- ``socket_requests_total{op,outcome}``: ``ok``, ``denied``, ``error`` or ``abandoned``;
- ``token_exchanges_total{outcome}``: per-peer token exchanges at authn, ``ok``, ``refused``,
  ``unavailable`` or ``error`` (:class:`ExchangeOutcome`);
- ``token_exchange_seconds``: how long an exchange took on the bus (successful ones);
- ``creds_renewals_total{outcome}``: renewals of the peer's NATS JWT, ``ok``, ``unavailable``,
  ``refused`` or ``expired`` (:class:`~meshssh_common.renewal.RenewalOutcome`);
- ``creds_expiry_seconds``: when the peer's NATS JWT expires (unix time; 0: never or none).

Example::

    m = AgentMetrics(ServiceMetrics("agent"))
    m.child_restarts.labels(child="sshd").inc()
"""

from __future__ import annotations

import enum

from meshssh_common.metrics import ServiceMetrics

__all__ = ["AgentMetrics", "ExchangeOutcome", "SocketOutcome", "TokenLookup"]


class SocketOutcome(enum.StrEnum):
    """How a socket request ended (``socket_requests_total{outcome}``)."""

    OK = "ok"
    DENIED = "denied"  # a control request from another user
    ERROR = "error"
    ABANDONED = "abandoned"  # the caller hung up during a login


class TokenLookup(enum.StrEnum):
    """Whether the caller's token was cached (``token_cache_lookups_total{result}``)."""

    HIT = "hit"
    MISS = "miss"


class ExchangeOutcome(enum.StrEnum):
    """How a per-peer token exchange ended (``token_exchanges_total{outcome}``)."""

    OK = "ok"
    REFUSED = "refused"  # authn refused the IdP token or the request (denied, bad, rate limit)
    UNAVAILABLE = "unavailable"  # no authn answered in time
    ERROR = "error"  # anything else (a reply that does not decode)


class AgentMetrics:
    """Every agent-specific metric, on the service's registry."""

    def __init__(self, base: ServiceMetrics) -> None:
        self.base = base
        self.map_serial = base.gauge("map_serial", "Serial of the network map the agent holds")
        self.map_age = base.gauge(
            "map_age_seconds", "Seconds since the agent applied a network map (0 before one)"
        )
        self.child_restarts = base.counter(
            "child_restarts", "Children restarted after an unexpected exit", ("child",)
        )
        self.dropin_writes = base.counter(
            "dropin_writes", "OpenSSH drop-in writes that changed the file"
        )
        self.token_lookups = base.counter(
            "token_cache_lookups",
            "Token lookups on the agent socket by result",
            ("result",),  # TokenLookup
        )
        self.socket_requests = base.counter(
            "socket_requests",
            "Agent socket requests by op and outcome",
            ("op", "outcome"),  # op: the request's tag (status, down...); outcome: SocketOutcome
        )
        self.exchanges = base.counter(
            "token_exchanges",
            "Per-peer token exchanges at authn by outcome",
            ("outcome",),  # ExchangeOutcome
        )
        self.exchange_seconds = base.histogram(
            "token_exchange_seconds",
            "Duration of successful per-peer token exchanges on the bus",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.renewals = base.counter(
            "creds_renewals",
            "Renewals of the peer's NATS JWT by outcome",
            ("outcome",),  # RenewalOutcome
        )
        self.creds_expiry = base.gauge(
            "creds_expiry_seconds", "When the peer's NATS JWT expires (unix time; 0: never)"
        )
