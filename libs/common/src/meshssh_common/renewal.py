"""Renewing a peer's NATS JWT before it expires (the agent's, the gateway's).

Management issues peer JWTs with a lifetime (policy's ``--peer-creds-ttl``, at most 24 h). At
about half of what is left, :func:`keep_renewed` registers again with the stored peer
credential (:func:`meshssh_common.registration.register`, no setup key) and rewrites
``nats.creds``; every connection made with that file takes the new JWT up at once
(:mod:`meshssh_common.creds_follower`), the agent's and its children's alike.

Outcomes (``meshssh_<service>_creds_renewals_total{outcome}``):
- ``ok``: a fresh JWT was written;
- ``unavailable``: management did not answer (each call retries with backoff); tried again
  at half of what is left, until the JWT expires;
- ``refused``: management refused the credential (the peer was removed): the bus is lost;
- ``expired``: the JWT expired before management answered: the bus is lost.
A lost bus ends :func:`keep_renewed` with the reason; the agent then stops its children and
exits 1, the gateway closes its terminals and exits 1.

Example::

    reason = await keep_renewed(renew, expires_at, log=log, count=m.renewals)
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable

from meshssh_common.errors import MeshError, Unavailable
from meshssh_common.logs import BoundLogger

__all__ = ["RenewalOutcome", "keep_renewed", "renew_at"]

_MIN_WAIT = 0.05


class RenewalOutcome(enum.StrEnum):
    """How one renewal ended (``creds_renewals_total{outcome}``)."""

    OK = "ok"
    UNAVAILABLE = "unavailable"
    REFUSED = "refused"
    EXPIRED = "expired"


def renew_at(expires_at: float, now: float) -> float:
    """When to renew a JWT expiring at ``expires_at``: half of what is left from ``now``."""
    return now + max(0.0, expires_at - now) / 2


async def keep_renewed(
    renew: Callable[[float], Awaitable[float | None]],
    expires_at: float | None,
    *,
    log: BoundLogger,
    count: Callable[[RenewalOutcome], None],
) -> str:
    """Renew at half-life until the bus identity is lost; returns why it was lost.

    Args:
        renew: registers again (giving up at the deadline it is passed, the current expiry)
            and writes the new creds; returns the new expiry (None: never expires).
        expires_at: the current JWT's expiry (None: it never expires; nothing to do).
        log: the peer's logger.
        count: told each outcome (the metric).
    """
    if expires_at is None:
        await asyncio.Event().wait()  # until cancelled
    while expires_at is not None:
        now = time.time()
        await asyncio.sleep(max(_MIN_WAIT, renew_at(expires_at, now) - now))
        try:
            new = await renew(expires_at)
        except (Unavailable, OSError) as e:  # OSError: the creds file could not be written
            if time.time() >= expires_at:
                count(RenewalOutcome.EXPIRED)
                return f"the NATS credentials expired; management did not renew them: {e}"
            count(RenewalOutcome.UNAVAILABLE)
            log.warning("NATS credentials not renewed yet; retrying", extra={"error": str(e)})
            continue  # again at half of what is left
        except MeshError as e:
            count(RenewalOutcome.REFUSED)
            return f"management refused to renew the NATS credentials: {e.public}"
        count(RenewalOutcome.OK)
        log.info("NATS credentials renewed", extra={"expires_at": new})
        expires_at = new
    await asyncio.Event().wait()  # renewed into a JWT without expiry
    return ""  # unreachable
