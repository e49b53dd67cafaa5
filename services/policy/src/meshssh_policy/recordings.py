"""policy's part in session recordings: it creates ``MESHSSH_RECORDINGS`` at start.

sshd cannot create streams (a peer's credentials allow publishing on its own recording
subjects only), so policy makes the stream, with ``--recordings-max-bytes`` and
``--recordings-max-age`` as its limits, as it makes ``MESHSSH_AUDIT``. A failure is logged and
does not stop policy: sessions whose rules say ``required`` are refused until the stream
exists, ``best_effort`` ones run unrecorded.

Example::

    await open_recordings_stream(js, settings, log)
"""

from __future__ import annotations

import nats.errors
from nats.js import JetStreamContext

from meshssh_common import subjects
from meshssh_common.logs import BoundLogger
from meshssh_common.recording_stream import ensure_recordings_stream
from meshssh_policy.settings import PolicySettings

__all__ = ["open_recordings_stream"]


async def open_recordings_stream(
    js: JetStreamContext, settings: PolicySettings, log: BoundLogger
) -> bool:
    """Create the recordings stream unless it exists; False (logged) when JetStream failed."""
    try:
        await ensure_recordings_stream(
            js, max_bytes=settings.recordings_max_bytes, max_age=settings.recordings_max_age
        )
    except (nats.errors.Error, TimeoutError) as e:
        log.warning(
            "cannot create the recordings stream; required recordings refuse sessions",
            extra={"stream": subjects.RECORDINGS_STREAM, "error": repr(e)},
        )
        return False
    return True
