"""The policy service's own Prometheus metrics (``meshssh_policy_*``, SPEC §8).

Label values are bounded and named by outcome.
"""

from __future__ import annotations

import enum
from typing import get_args

from meshssh_common.metrics import ServiceMetrics
from meshssh_common.wire import RefusalReason

__all__ = ["PolicyMetrics", "RejectReason"]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SIZE = (256, 1024, 4096, 16384, 65536, 262144, 1048576)


class RejectReason(enum.StrEnum):
    """Why a registration or meta update was refused (the ``reason`` label)."""

    BAD_KEY = "bad_key"
    EXPIRED_KEY = "expired_key"
    EXHAUSTED_KEY = "exhausted_key"
    REVOKED_KEY = "revoked_key"
    BAD_CREDENTIAL = "bad_credential"
    OUTSIDE_PREFIX = "outside_prefix"
    BAD_ADDRESS = "bad_address"
    ADDRESS_TAKEN = "address_taken"
    BAD_HOST_KEY = "bad_host_key"
    BAD_REQUEST = "bad_request"
    BAD_NATS_KEY = "bad_nats_key"
    NO_BUS_KEYS = "no_bus_keys"


class PolicyMetrics:
    """Map computation and publishing, registrations, online peers."""

    def __init__(self, base: ServiceMetrics) -> None:
        self.maps_computed = base.counter("maps_computed", "Network maps computed")
        self.maps = base.counter(
            "maps",
            "Network map publish outcomes",
            ("result",),  # published | unchanged | stale | error
        )
        self.compute_seconds = base.histogram(
            "compute_seconds", "Time to compute the maps of one batch of changes", buckets=_LATENCY
        )
        self.publish_seconds = base.histogram(
            "publish_seconds", "Time to write one network map to KV", buckets=_LATENCY
        )
        self.change_seconds = base.histogram(
            "change_seconds",
            "Time from a batch of changes arriving to its last map being written",
            buckets=_LATENCY,
        )
        self.map_bytes = base.histogram(
            "map_bytes",
            "Bytes written per published network map (its delta, plus a new snapshot's)",
            buckets=_SIZE,
        )
        self.map_writes = base.counter(
            "map_writes",
            "Published network maps by what was written",
            ("kind",),  # delta (against the stored snapshot) | snapshot (a new one and its delta)
        )
        self.peers = base.gauge("peers", "Registered peers")
        self.peers_online = base.gauge("peers_online", "Peers with a recent heartbeat")
        self.replicas = base.gauge("replicas", "Live policy replicas sharing out the maps")
        self.owned = base.gauge("owned_peers", "Peers whose maps this replica publishes")
        self.registrations = base.counter(
            "registrations",
            "Accepted registrations",
            ("kind",),  # new | returning
        )
        self.rejected = base.counter(
            "registrations_rejected", "Refused registrations and meta updates", ("reason",)
        )
        self.bus_revocations = base.counter(
            "bus_revocations", "Bus keys revoked (removed or re-keyed peers, admin revocations)"
        )
        self.bus_push_failures = base.counter(
            "bus_claims_push_failures",
            "Account JWT pushes (revocations) that nats-server refused or did not answer",
        )
        self.peer_creds = base.counter(
            "peer_creds_issued", "NATS credentials (user JWTs) issued to peers"
        )
        self.meta_updates = base.counter("meta_updates", "Accepted metadata updates")
        self.heartbeats = base.counter("heartbeats", "Heartbeats received")
        self.bad_state = base.counter(
            "bad_state_values", "Stored values that did not decode", ("bucket",)
        )
        self.batch_errors = base.counter("batch_errors", "Batches that failed and were retried")
        self.login_events = base.counter(
            "login_events",
            "Accepted-login audit events handled (users added on first login)",
            ("result",),  # added | updated | ignored | bad | retry
        )
        self.recording_reads = base.counter(
            "recording_reads",
            "Recordings asked for by the dashboard's player",
            ("result",),  # served | not_found | unauthenticated | denied | error
        )
        self.terminal_tickets = base.counter(
            "terminal_tickets",
            "Browser terminal requests from the dashboard",
            ("result",),  # issued | refused | sign_in_again
        )
        self.ticket_redemptions = base.counter(
            "ticket_redemptions",
            "Browser terminal tickets gateways presented (granted, or the refusal reason)",
            ("result",),
        )
        for result in ("issued", "refused", "sign_in_again"):
            self.terminal_tickets.labels(result=result)
        for result in ("granted", *get_args(RefusalReason)):
            self.ticket_redemptions.labels(result=result)
        for reason in RejectReason:
            self.rejected.labels(reason=reason.value)
        for result in ("published", "unchanged", "stale", "error"):
            self.maps.labels(result=result)
        for result in ("added", "updated", "ignored", "bad", "retry"):
            self.login_events.labels(result=result)
        for result in ("served", "not_found", "unauthenticated", "denied", "error"):
            self.recording_reads.labels(result=result)
