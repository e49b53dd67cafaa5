"""The ``meshssh_sshd_*`` metrics (SPEC §8), with bounded label values named by outcome.

Example::

    m = SshdMetrics(ctx.metrics)
    m.connections.labels(outcome="accepted").inc()
    m.auth.labels(method="password", result="reject").inc()
"""

from __future__ import annotations

from meshssh_common.metrics import ServiceMetrics

__all__ = ["SshdMetrics"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_DURATION = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)


class SshdMetrics:
    """Every sshd-specific metric, on the service's registry."""

    def __init__(self, base: ServiceMetrics) -> None:
        self.connections = base.counter(
            "connections",
            "TCP connections by outcome: accepted, or the reason they were refused",
            ("outcome",),  # accepted | no_map | outside_prefix | self | no_rule | dropped | ...
        )
        self.auth = base.counter(
            "auth_attempts",
            "Authentication attempts by method and result",
            ("method", "result"),  # method: password|keyboard-interactive|none; result: below
        )
        self.auth_rejects = base.counter(
            "auth_rejects",
            "Rejected authentication attempts by reason",
            # expired | not_authorized | no_jwt_config | rate_limited | wrong_audience |
            # replayed | replay_cache_full | idp_token_refused | ...
            ("reason",),
        )
        self.jwt_validation = base.histogram(
            "jwt_validation_seconds", "Time to validate one JWT", buckets=_SECONDS
        )
        self.jwks_refreshes = base.counter(
            "jwks_refreshes",
            "JWKS refreshes asked of authn after an unknown kid",
            ("result",),  # fetched|missed|throttled_kid|throttled_global|throttled_authn|error
        )
        self.replay_cache_entries = base.gauge(
            "replay_cache_entries", "Per-peer token ids remembered until their tokens expire"
        )
        self.active_sessions = base.gauge("active_sessions", "Session channels running now")
        self.active_connections = base.gauge(
            "active_connections", "Authenticated SSH connections open now"
        )
        self.sessions = base.counter(
            "sessions",
            "Session channels started by kind",
            ("kind",),  # shell | exec | sftp
        )
        self.session_duration = base.histogram(
            "session_duration_seconds", "How long session channels lasted", buckets=_DURATION
        )
        self.bytes = base.counter(
            "bytes",
            "Bytes carried by sessions and forwards",
            ("direction",),  # in (from the client) | out (to the client)
        )
        self.forwards = base.counter(
            "forwards",
            "Port forwards by kind and result",
            ("kind", "result"),  # kind: local|remote; result: opened|refused|failed
        )
        self.sftp_sessions = base.counter(
            "sftp_sessions",
            "SFTP subsystem requests by result",
            ("result",),  # started | refused | unavailable
        )
        self.session_refusals = base.counter(
            "session_refusals",
            "Session channels refused before a process started, by reason",
            ("reason",),  # no_login_shell
        )
        self.permit_open_refusals = base.counter(
            "permit_open_refusals",
            "direct-tcpip channels (-L, -D) refused by --ssh-permit-open",
        )
        self.preauth_failures = base.counter(
            "preauth_failures",
            "Connections that failed before authentication, by error (each penalizes its source)",
            ("reason",),  # ProtocolNotSupported | ProtocolError | ConnectionLost | ...
        )
        self.policy_kicks = base.counter(
            "policy_kicks",
            "Connections closed because a new network map revoked them",
            ("reason",),  # source | user | ssh_disabled | no_map | ended
        )
        self.session_limits = base.counter(
            "session_limits",
            "Sessions a session rule ended, by limit",
            ("reason",),  # idle_timeout | max_session
        )
        self.recordings = base.counter(
            "recordings",
            "Session recordings by mode and what happened",
            ("mode", "result"),  # required | best_effort; started | unavailable | lost | backlog
        )
        self.recording_bytes = base.counter(
            "recording_bytes",
            "Bytes of recordings by result",
            ("result",),  # stored | failed | dropped
        )
        self.netmap_serial = base.gauge("netmap_serial", "Serial of the network map in use")
        self.audit = base.counter(
            "audit_events",
            "Audit events by result",
            ("result",),  # published | retried | failed | dropped
        )
