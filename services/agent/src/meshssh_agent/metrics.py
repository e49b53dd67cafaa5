"""The ``meshssh_agent_*`` metrics, beside the runner's own (up, ready, NATS, bad messages).

- ``map_serial``: the serial of the network map the agent holds (0: none);
- ``map_age_seconds``: since the agent last applied a map (0 before the first);
- ``child_restarts_total{child}``: sshd or relay restarted after an unexpected exit;
- ``dropin_writes_total``: OpenSSH drop-in writes that changed the file;
- ``token_cache_lookups_total{result}``: ``hit`` or ``miss`` on the agent socket;
- ``socket_requests_total{op,outcome}``: ``ok``, ``denied``, ``error`` or ``abandoned``.

Example::

    m = AgentMetrics(ServiceMetrics("agent"))
    m.child_restarts.labels(child="sshd").inc()
"""

from __future__ import annotations

from meshssh_common.metrics import ServiceMetrics

__all__ = ["AgentMetrics"]


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
            ("result",),  # hit | miss
        )
        self.socket_requests = base.counter(
            "socket_requests",
            "Agent socket requests by op and outcome",
            ("op", "outcome"),  # op: status|down|configure|token-*; outcome: see the docstring
        )
