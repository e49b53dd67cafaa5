"""The ``MESHSSH_AUDIT`` JetStream stream: one definition, and one way to store into it.

policy creates it at start (it consumes accepted logins from it); sshd only publishes into it
(a peer's credentials cannot create streams). Tests that run sshd without policy call this
in policy's stead. Creators racing each other is harmless.

:func:`store_audit_event` publishes one event and waits for the stream's ack, retrying while
JetStream does not answer (a NATS node died and the stream elects a new leader, 4 to 9 s; a
reconnect), with a ``Nats-Msg-Id`` so that a retry of a publish that was stored but whose ack
was lost is dropped by the stream's duplicate window instead of stored twice. A missing stream
looks the same as a leaderless one (nobody answers), so it is waited for too.

Example::

    await ensure_audit_stream(js)
    await store_audit_event(js, subject, data, msg_id="p1-4711-1", on_retry=count)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from meshssh_common import subjects
from meshssh_common.kv import default_replicas

__all__ = ["ensure_audit_stream", "store_audit_event"]

_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0  # seconds between retries of an unacknowledged publish


async def ensure_audit_stream(js: JetStreamContext) -> None:
    """Create the audit stream unless it exists (safe to race with other creators).

    It gets the process's JetStream replicas (:func:`~meshssh_common.kv.default_replicas`).

    Raises:
        nats.errors.Error: JetStream did not answer (callers retry).
    """
    try:
        await js.stream_info(subjects.AUDIT_STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=subjects.AUDIT_STREAM,
        subjects=[subjects.AUDIT_SUBJECTS],
        storage=StorageType.FILE,
        num_replicas=default_replicas(),
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # Someone created it between our lookup and our create: use theirs.
        await js.stream_info(subjects.AUDIT_STREAM)


async def store_audit_event(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    msg_id: str,
    within: float | None = None,
    on_retry: Callable[[Exception], None] | None = None,
) -> None:
    """Publish ``data`` to ``subject`` and wait until the stream has stored it.

    Args:
        js: the JetStream context.
        subject: an audit subject.
        data: the encoded event.
        msg_id: unique per event (the stream drops a second copy with the same id).
        within: give up after this many seconds (None: retry until cancelled).
        on_retry: called with the error before each retry.

    Raises:
        nats.js.errors.APIError: JetStream answered with a refusal (not an outage).
        nats.errors.Error | TimeoutError: still not stored after ``within`` seconds.
    """
    deadline = None if within is None else time.monotonic() + within
    delay = _RETRY_FIRST
    while True:
        try:
            await js.publish(subject, data, timeout=2.0, headers={"Nats-Msg-Id": msg_id})
            return
        except nats.js.errors.ServiceUnavailableError as e:
            error: Exception = e  # JetStream is electing a leader: an outage
        except nats.js.errors.APIError:
            raise
        except (nats.errors.Error, TimeoutError) as e:
            error = e
        if deadline is not None and time.monotonic() + delay > deadline:
            raise error
        if on_retry is not None:
            on_retry(error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX)
