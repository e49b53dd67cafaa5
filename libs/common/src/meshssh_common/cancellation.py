"""Cancellation that survives libraries which swallow it.

nats-py's flush path catches ``asyncio.CancelledError`` and returns normally (so does 3.11's
``wait_for`` inside ``nc.request``), so a task cancelled while publishing or reading carries on
as if nothing happened, and a shutdown that waits for it hangs. Loops that call NATS call
:func:`raise_if_cancelling` after each call.

Example::

    while True:
        await nc.publish(subject, payload)
        raise_if_cancelling()
"""

from __future__ import annotations

import asyncio

__all__ = ["raise_if_cancelling"]


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task was asked to cancel and it got lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
