"""Prometheus metrics every service has, on a per-service registry (SPEC §8).

Names are ``meshssh_<service>_<what>``; label values are bounded and named by outcome.

Example::

    metrics = ServiceMetrics("sshd")
    metrics.bad_messages.labels(endpoint="register", reason="invalid").inc()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics", "metric_name"]

M = TypeVar("M", Counter, Gauge, Histogram)


def metric_name(service: str, what: str) -> str:
    """``meshssh_<service>_<what>``."""
    return f"meshssh_{service}_{what}"


class ServiceMetrics:
    """The registry of one service process and the metrics the common code records."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self._own: dict[str, Counter | Gauge | Histogram] = {}  # counter(), gauge(), histogram()
        r = self.registry
        self.up = Gauge(metric_name(service, "up"), "1 while the service runs", registry=r)
        self.ready = Gauge(metric_name(service, "ready"), "1 while /readyz is 200", registry=r)
        self.nats_connected = Gauge(
            metric_name(service, "nats_connected"), "1 while connected to NATS", registry=r
        )
        self.nats_events = Counter(
            metric_name(service, "nats_events"),
            "NATS connection events",
            ["event"],  # connection.NatsEvent
            registry=r,
        )
        self.bad_messages = Counter(
            metric_name(service, "bad_messages"),
            "Payloads rejected before use",
            ["endpoint", "reason"],  # reason: errors.BadReason
            registry=r,
        )
        self.signed_doc_refused = Counter(
            metric_name(service, "signed_doc_refused"),
            "Maps and JWKS documents refused because their signature did not verify",
            ["kind", "reason"],  # kind: map | jwks; reason: signed_doc.Refused.reason
            registry=r,
        )
        self.requests = Counter(
            metric_name(service, "requests"),
            "NATS requests served",
            ["endpoint", "result"],  # result: ok | <error code>
            registry=r,
        )
        self.request_seconds = Histogram(
            metric_name(service, "request_seconds"),
            "NATS request handling time",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )

    def _made(self, what: str, kind: type[M], make: Callable[[str], M]) -> M:
        # A serve() started again (JetStream was not ready: see service.py) asks for its
        # metrics again: it gets the same ones, counts kept, instead of a duplicate.
        made = self._own.get(what)
        if made is None:
            made = self._own[what] = make(metric_name(self.service, what))
        if not isinstance(made, kind):
            raise TypeError(f"metric {what} is a {type(made).__name__}, not a {kind.__name__}")
        return made

    def counter(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        """A service-specific counter on this registry (the same one when asked again)."""
        return self._made(
            what, Counter, lambda name: Counter(name, doc, list(labels), registry=self.registry)
        )

    def gauge(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        """A service-specific gauge on this registry (the same one when asked again)."""
        return self._made(
            what, Gauge, lambda name: Gauge(name, doc, list(labels), registry=self.registry)
        )

    def histogram(
        self,
        what: str,
        doc: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        """A service-specific histogram on this registry (the same one when asked again)."""
        return self._made(
            what,
            Histogram,
            lambda name: Histogram(
                name, doc, list(labels), buckets=buckets, registry=self.registry
            ),
        )
