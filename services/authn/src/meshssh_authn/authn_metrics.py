"""The ``meshssh_authn_*`` metrics; every label value is from a fixed, small set.

- ``jwks_refreshes_total{trigger,outcome}``: trigger ``startup|scheduled|forced|keys_changed``;
  outcome of a fetch ``updated|unchanged|error``; of a forced request that fetched nothing
  ``known_kid`` (already published), ``throttled_kid`` (that kid just missed) or
  ``throttled_global`` (no fetch slot in time).
- ``jwks_errors_total{kind}``: ``unreachable|http_status|bad_document|issuer_mismatch|empty``.
- ``jwks_keys``: keys in the published snapshot; ``jwks_last_success_timestamp_seconds``.
- ``device_flows_total{outcome}``: ``started|approved|denied|completed|expired|error``, and the
  refusals ``foreign_peer`` (a start for another peer) and ``foreign_poll`` (a poll by a peer
  that did not start the flow).
- ``tokens_issued_total``; ``login_failures_total{reason}``:
  ``bad_credentials|unknown_code|throttled|bad_request``.
- ``signing_key_rotations_total``.
- ``token_exchanges_total{result}``: ``ok|rate_limited|refused|bad_request|reexchange|
  unavailable``; ``token_exchange_seconds``: time to answer one exchange.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from meshssh_common.metrics import ServiceMetrics

__all__ = ["AuthnMetrics"]


class AuthnMetrics:
    """authn's own metrics, registered on the service's registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.jwks_refreshes: Counter = metrics.counter(
            "jwks_refreshes", "JWKS fetch attempts by trigger and outcome", ("trigger", "outcome")
        )
        self.jwks_errors: Counter = metrics.counter(
            "jwks_errors", "Failed JWKS fetches by kind", ("kind",)
        )
        self.jwks_keys: Gauge = metrics.gauge("jwks_keys", "Signing keys in the published JWKS")
        self.jwks_last_success: Gauge = metrics.gauge(
            "jwks_last_success_timestamp_seconds", "Unix time of the last good JWKS fetch"
        )
        self.device_flows: Counter = metrics.counter(
            "device_flows", "Device-flow events by outcome", ("outcome",)
        )
        self.tokens_issued: Counter = metrics.counter(
            "tokens_issued", "Tokens signed by the embedded provider"
        )
        self.login_failures: Counter = metrics.counter(
            "login_failures", "Refused logins on the embedded provider's page", ("reason",)
        )
        self.key_rotations: Counter = metrics.counter(
            "signing_key_rotations", "Changes to the embedded provider's signing key set"
        )
        self.exchanges: Counter = metrics.counter(
            "token_exchanges", "Token exchanges (per-peer tokens) by result", ("result",)
        )
        self.exchange_seconds: Histogram = metrics.histogram(
            "token_exchange_seconds", "Seconds to answer one token exchange"
        )
