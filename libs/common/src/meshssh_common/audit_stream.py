"""The ``MESHSSH_AUDIT`` JetStream stream: one definition for every process that needs it.

policy creates it at start (it consumes accepted logins from it); sshd only publishes into it
(a peer's credentials cannot create streams). Tests that run sshd without policy call this
in policy's stead. Creators racing each other is harmless.

Example::

    await ensure_audit_stream(js)
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from meshssh_common import subjects

__all__ = ["ensure_audit_stream"]


async def ensure_audit_stream(js: JetStreamContext) -> None:
    """Create the audit stream unless it exists (safe to race with other creators).

    Raises:
        nats.errors.Error: JetStream did not answer (callers retry).
    """
    try:
        await js.stream_info(subjects.AUDIT_STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=subjects.AUDIT_STREAM, subjects=[subjects.AUDIT_SUBJECTS], storage=StorageType.FILE
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # Someone created it between our lookup and our create: use theirs.
        await js.stream_info(subjects.AUDIT_STREAM)
