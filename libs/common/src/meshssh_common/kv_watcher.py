"""A KV watch that notices within seconds that the NATS node holding its consumer died.

A KV watch is an ordered push consumer (R1, in memory) that nats-server places on one node
of the bucket's stream. When that node dies while the watching client stays connected to
another one, nothing tells the client: it only sees the consumer's idle heartbeats stop.
nats-py's own ``KeyValue.watch`` asks for a heartbeat every 5 s and checks every two of
them, so such a watch was silent for 10 to 20 s (measured: 20 s) before nats-py recreated the
consumer; policy's state fell that far behind, and a REST write waiting for its own change
(read-your-writes) waited with it. That was the rare 8 s "map convergence" outlier after a
node kill.

:class:`KvWatcher` is the same watch (last value per key, then live changes, an initial-done
marker) with a heartbeat of its own, ``heartbeat`` seconds (default :data:`HEARTBEAT`): a dead
consumer is noticed after two missed heartbeats and nats-py's ordered-consumer reset makes a
new one from the next stream sequence, retried every two heartbeats while JetStream elects
new leaders. A heartbeat is a few bytes per watch, and watches are per replica, never per
peer.

Example::

    watcher = await KvWatcher.start(kv, "peer.*")
    async for entry in watcher:          # ends once stop() was called
        if entry is None:
            ...                          # the values that existed at the start are all in
    await watcher.stop()
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

__all__ = ["HEARTBEAT", "KvWatcher"]

HEARTBEAT: Final = 0.5
"""Seconds between a watch consumer's idle heartbeats: a dead one is replaced within ~2 s."""

_INACTIVE = 300.0  # the server drops a consumer nobody reads for this long (nats-py's default)
_MARKER_OPS: Final = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}


class _Stopped:
    """The end of a stopped watch."""


_STOPPED: Final = _Stopped()


class KvWatcher:
    """One ordered-consumer watch of a bucket's keys; iterate it for the entries."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._updates: asyncio.Queue[KeyValue.Entry | _Stopped | None] = asyncio.Queue(256)
        self._sub: Any = None
        self._init_done = False
        self._subscribed = asyncio.Event()

    @classmethod
    async def start(
        cls,
        kv: KeyValue,
        keys: str,
        *,
        heartbeat: float = HEARTBEAT,
        inactive_threshold: float | None = None,
    ) -> KvWatcher:
        """Watch ``keys`` (a key or a pattern) of bucket ``kv``.

        Args:
            kv: the bucket.
            keys: ``peer.p1``, ``peer.*``, ``>``.
            heartbeat: seconds between the consumer's idle heartbeats.
            inactive_threshold: seconds after which the server drops the consumer once nobody
                reads it (default 300).

        Raises:
            nats.errors.Error: JetStream did not make the consumer.
        """
        watcher = cls(kv)
        js = kv._js
        watcher._sub = await js.subscribe(
            f"{kv._pre}{keys}",
            stream=kv._stream,
            cb=watcher._on_msg,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=heartbeat,
            inactive_threshold=inactive_threshold or _INACTIVE,
        )
        try:
            info = await watcher._sub.consumer_info()
        except BaseException:
            await watcher._sub.unsubscribe()
            raise
        # Nothing stored and nothing delivered yet: the initial values are all in (none).
        if info.num_pending == 0 and watcher._sub.delivered == 0:
            await watcher._initial_done()
        watcher._subscribed.set()
        return watcher

    def __aiter__(self) -> KvWatcher:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        """The next entry; None once, after the initial values. Ends after :meth:`stop`."""
        entry = await self._updates.get()
        if isinstance(entry, _Stopped):
            raise StopAsyncIteration
        return entry

    async def stop(self) -> None:
        """Delete the consumer and end the iteration."""
        try:
            await self._sub.unsubscribe()
        finally:
            while self._updates.full():  # the reader is gone or behind: drop what it missed
                self._updates.get_nowait()
            self._updates.put_nowait(_STOPPED)

    async def _initial_done(self) -> None:
        if not self._init_done:
            self._init_done = True
            await self._updates.put(None)

    async def _on_msg(self, msg: Msg) -> None:
        # Messages may arrive before start() has read the consumer's info: wait for it, so
        # the initial-done marker is decided once, in order.
        await self._subscribed.wait()
        meta = msg.metadata
        op = None
        if msg.header and KV_OP in msg.header:
            op = msg.header[KV_OP]
        elif msg.header and KV_MARKER_REASON in msg.header:
            op = _MARKER_OPS.get(msg.header[KV_MARKER_REASON])
            if op is None:  # a marker reason from a newer server: not a value
                if meta.num_pending == 0:
                    await self._initial_done()
                return
        await self._updates.put(
            KeyValue.Entry(
                bucket=self._kv._name,
                key=msg.subject[len(self._kv._pre) :],
                value=msg.data,
                revision=meta.sequence.stream,
                delta=meta.num_pending,
                created=None,  # unused here (nats-py puts a datetime in this int field)
                operation=op,
            )
        )
        if meta.num_pending == 0:
            await self._initial_done()
