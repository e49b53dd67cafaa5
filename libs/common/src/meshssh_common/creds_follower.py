"""Follow a creds file that is rewritten while the connection lives (renewed peer JWTs).

nats-server enforces a user JWT's ``exp`` on live connections too (platform-notes §12): when
it passes, the server closes the connection with ``User Authentication Expired`` and nats-py
does not reconnect. Rewriting the creds file is therefore not enough, even though nats-py
rereads it on every reconnect: the live connection must present the new JWT. So a connection
made with a creds file (:func:`~meshssh_common.connection.connect_nats`) follows the file: when
it is replaced by a valid creds file for the same key, the client reconnects at once
(``force_reconnect``; subscriptions are replayed, publishes are buffered meanwhile).

A file for another key is not taken up: the connection's inbox prefix belongs to the old key
(the process must be restarted), and this is logged. An unreadable or malformed file is
logged and ignored; the current connection keeps its identity.

Example::

    follow_creds(nc, Path("/var/lib/meshssh/nats.creds"), log=log)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from nats.aio.client import Client as NATS

from meshssh_common.logs import BoundLogger
from meshssh_common.nats_jwt import read_creds

__all__ = ["follow_creds", "poll_interval"]

_FOLLOWERS: set[asyncio.Task[None]] = set()
_MAX_POLL = 5.0
_MIN_POLL = 0.1


def poll_interval(lifetime: float | None) -> float:
    """How often to look at the file: a twentieth of the JWT's lifetime, 0.1 s to 5 s."""
    if lifetime is None or lifetime <= 0:
        return _MAX_POLL
    return max(_MIN_POLL, min(_MAX_POLL, lifetime / 20))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


async def _follow(
    nc: NATS, path: Path, public_key: str, every: float, log: BoundLogger | None
) -> None:
    seen = _stamp(path)
    while not nc.is_closed:
        await asyncio.sleep(every)
        stamp = _stamp(path)
        if stamp is None or stamp == seen:
            continue
        seen = stamp
        try:
            creds = read_creds(path)
        except ValueError as e:
            if log is not None:
                log.warning("creds file changed but cannot be used", extra={"error": str(e)})
            continue
        if creds.public_key != public_key:
            if log is not None:
                log.error(
                    "creds file now holds another key; restart to use it",
                    extra={"path": str(path), "key": creds.public_key},
                )
            continue
        if nc.is_closed:
            return
        if log is not None:
            log.info("creds file renewed; reconnecting with it", extra={"path": str(path)})
        with contextlib.suppress(Exception):
            await nc.force_reconnect()


def follow_creds(
    nc: NATS,
    path: Path,
    *,
    public_key: str,
    lifetime: float | None,
    log: BoundLogger | None = None,
) -> asyncio.Task[None]:
    """Reconnect ``nc`` whenever ``path`` is replaced by creds for ``public_key``.

    Args:
        nc: the connected client (the follower ends when it is closed).
        path: its creds file.
        public_key: the user key it connected with.
        lifetime: the JWT's lifetime in seconds (None: no expiry), which sets the poll rate.
        log: receives a line per renewal taken up or refused.
    """
    task = asyncio.create_task(_follow(nc, path, public_key, poll_interval(lifetime), log))
    _FOLLOWERS.add(task)
    task.add_done_callback(_FOLLOWERS.discard)
    return task
