"""Follow one KV key without a JetStream consumer: a direct get plus a plain subscription.

A peer may read only its own keys (``meshssh-netmaps`` ``peer.<id>``, ``meshssh-jwks``
``current``), and a KV watch creates a consumer whose filter permissions cannot limit (and one
consumer per peer does not scale). So :class:`KeyWatch` reads the key with two things a peer's
permissions can name exactly:

- a plain subscription to ``$KV.<bucket>.<key>``, which hears every later write as it is
  published (a delete or purge is a message whose ``KV-Operation`` header says so);
- a direct get, ``$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`` (a raw request: no
  STREAM.INFO, no consumer; the bucket needs ``allow_direct``), which says what is stored:
  a value, a delete marker, or ``404`` (nothing).

The subscription is made first, then the key is read: a write published in between comes
through the subscription. The key is read again after every reconnect (what was published
while the connection was down is lost to the subscription; nats-py re-subscribes before the
reconnect counter moves, so the read comes after the new subscription) and every
``resync_every`` seconds (on average, jittered) as a safety net. A read that a live message
overtook is dropped (the message is newer than what the read found, or the newer one is
still on its way).

Ordering is by the payload's own ``version`` (a map's ``serial``) when the caller gives one:
a value whose version is not above the held one is not reported, so replays never go
backwards. A delete is reported as ``None`` and forgets the held version (a re-created key
starts over). Without ``version``, a value is reported when its bytes differ from the held
one (latest wins; the periodic read corrects what the last message got wrong).

A value that does not decode is reported to ``on_bad_value`` once per distinct payload and
skipped. A read that fails because NATS is away (a NATS error, a timeout, a socket error,
an unexpected status such as the bucket missing) is reported to ``on_retry`` (once per
outage; a warning in this module's log when None) and tried again with backoff. Anything else
is a bug, not an outage: it is raised from :meth:`KeyWatch.follow`.

Limits: a plain subscription also hears a publish that the stream then refuses (a lost
compare-and-set). With ``version``, an equal version is ignored, so such a payload is held
only if its version is higher than the stored one's.

Example::

    watch = KeyWatch(nc, "meshssh-netmaps", "peer.p1", NetworkMap, version=lambda m: m.serial)
    async for event in watch.follow():
        if event.synced:
            ready.set()              # the stored value (or its absence) has been reported
        elif event.value is None:
            ...                      # absent or deleted
        else:
            ...                      # a newer value
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import codec
from meshssh_common.cancellation import raise_if_cancelling
from meshssh_common.errors import Unavailable, WireError
from meshssh_common.signed_doc import Verifier

__all__ = ["KeyEvent", "KeyWatch", "Reconnects", "direct_get"]

T = TypeVar("T")

_DELETE_OPS: Final = ("DEL", "PURGE")
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0
_HANDOVER_YIELDS = 50
# The safety-net read comes after resync_every times this: peers that all read at once (after
# a nats-server restart) spread out within a few periods instead of reading in step.
_JITTER = (0.5, 1.5)
# Failures of a read that mean "NATS is away": follow() retries these and raises the rest.
_OUTAGE = (nats.errors.Error, TimeoutError, OSError, Unavailable)
_RECONNECTED: Final = object()  # put on a watch's queue by Reconnects
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyEvent(Generic[T]):
    """One reported change of the key; ``value`` is None when it is absent or deleted.

    ``synced`` (no value) marks a completed read: everything stored up to it has been
    reported. It comes after the first read and after every later one.
    """

    value: T | None
    synced: bool = False


class Reconnects:
    """Tells every registered queue when ``nc`` has reconnected (one per connection).

    nats-py has a single ``reconnected_cb``, owned by whoever connected; this polls its
    ``reconnects`` counter instead, every ``every`` seconds while any queue is registered.
    Share one between the watches of a connection (a process that follows many keys). All
    the instances of a process are polled by one timer (:class:`_Ticker`): a process with a
    thousand connections (the scale bench's fake peers) wakes up once per period, not a
    thousand times.
    """

    def __init__(self, nc: NATS, *, every: float = 0.25) -> None:
        self._nc = nc
        self._every = every
        self._queues: set[asyncio.Queue[object]] = set()
        self._seen = 0

    def add(self, queue: asyncio.Queue[object]) -> None:
        """Put a reconnect marker on ``queue`` after each reconnect from now on."""
        if not self._queues:
            self._seen = int(self._nc.stats["reconnects"])
            _Ticker.of(self._every).add(self)
        self._queues.add(queue)

    def remove(self, queue: asyncio.Queue[object]) -> None:
        """Stop telling ``queue``; polling stops with the last one."""
        self._queues.discard(queue)
        if not self._queues:
            _Ticker.of(self._every).discard(self)

    def check(self) -> None:
        """Tell the queues if the connection reconnected since the last check."""
        now = int(self._nc.stats["reconnects"])
        if now != self._seen:
            self._seen = now
            for queue in self._queues:
                queue.put_nowait(_RECONNECTED)


class _Ticker:
    """One polling task per period and event loop for every :class:`Reconnects` in use."""

    _all: ClassVar[dict[tuple[int, float], _Ticker]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        self._loop = loop
        self._every = every
        self._members: set[Reconnects] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, every: float) -> _Ticker:
        loop = asyncio.get_running_loop()
        key = (id(loop), every)
        ticker = cls._all.get(key)
        if ticker is None or ticker._loop is not loop:  # an id reused by a later loop
            ticker = cls._all[key] = cls(loop, every)
        return ticker

    def add(self, member: Reconnects) -> None:
        self._members.add(member)
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._poll())

    def discard(self, member: Reconnects) -> None:
        self._members.discard(member)
        if not self._members:
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self._all.pop((id(self._loop), self._every), None)

    async def _poll(self) -> None:
        while self._members:
            await asyncio.sleep(self._every)
            for member in list(self._members):
                member.check()


class KeyWatch(Generic[T]):
    """Follows key ``key`` of bucket ``bucket``, whose values are all ``T``."""

    def __init__(
        self,
        nc: NATS,
        bucket: str,
        key: str,
        typ: type[T],
        *,
        version: Callable[[T], float] | None,
        on_bad_value: Callable[[str, WireError], None] | None = None,
        resync_every: float = 30.0,
        get_timeout: float = 2.0,
        reconnects: Reconnects | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.key = key
        self.typ = typ
        self._verifier = verifier  # values are signed envelopes: open them (signed_doc)
        self.subject = f"$KV.{bucket}.{key}"
        self._nc = nc
        self._bucket = bucket
        self._version = version
        self._on_bad_value = on_bad_value
        self._resync_every = resync_every
        self._get_timeout = get_timeout
        self._reconnects = reconnects
        # The value last reported, as (its version, its bytes); None: none held.
        self._held: tuple[float | None, bytes] | None = None
        self._reread_at: float | None = None  # set by forget()
        self._reported = False
        self._bad: bytes | None = None

    def forget(self, *, reread_in: float) -> None:
        """Forget the value last reported and read the key again in ``reread_in`` seconds.

        For a caller that could not use that value (a map delta whose snapshot it could not
        read yet): the read reports it again, even if unchanged.
        """
        self._held = None
        self._reread_at = time.monotonic() + reread_in

    async def get(self) -> bytes | None:
        """The stored payload of the key; None when it is absent or deleted.

        Raises:
            Unavailable: the server answered with a status other than "no message" (for
                example no bucket, or a bucket without ``allow_direct``).
            nats.errors.Error: NATS did not answer (no responders, timeout, closed).
        """
        return await direct_get(self._nc, self._bucket, self.key, timeout=self._get_timeout)

    async def follow(
        self, *, on_retry: Callable[[Exception], None] | None = None
    ) -> AsyncIterator[KeyEvent[T]]:
        """Yield the stored value, then every newer one, until cancelled (module docstring).

        Raises:
            Exception: anything but an outage (a bug, for example in ``on_bad_value``).
        """
        queue: asyncio.Queue[object] = asyncio.Queue()
        handed = 0  # messages nats-py has handed to deliver()

        async def deliver(msg: Msg) -> None:
            nonlocal handed
            handed += 1
            queue.put_nowait(msg)

        reconnects = self._reconnects or Reconnects(self._nc)
        reconnects.add(queue)
        sub = None
        try:
            delay = _FIRST_DELAY
            failing = False
            get_at = 0.0  # monotonic time of the next read; 0: now
            while True:
                if sub is None:
                    try:
                        sub = await self._nc.subscribe(self.subject, cb=deliver)
                    except _OUTAGE as e:
                        raise_if_cancelling()
                        failing = _report(e, failing, on_retry)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, _MAX_DELAY)
                        continue
                if time.monotonic() >= get_at:
                    # Messages heard before the read are older than what it finds: let
                    # nats-py hand them over (bounded: one it dropped never comes), report
                    # them, then read.
                    for _ in range(_HANDOVER_YIELDS):
                        if handed >= sub.delivered:
                            break
                        await asyncio.sleep(0)
                    while not queue.empty():
                        if (event := self._heard(queue.get_nowait())) is not None:
                            yield event
                    heard = sub.delivered
                    try:
                        stored = await self.get()
                    except _OUTAGE as e:
                        raise_if_cancelling()
                        failing = _report(e, failing, on_retry)
                        get_at = time.monotonic() + delay
                        delay = min(delay * 2, _MAX_DELAY)
                    else:
                        raise_if_cancelling()
                        failing, delay = False, _FIRST_DELAY
                        get_at = time.monotonic() + self._resync_every * random.uniform(*_JITTER)
                        # A live message that overtook the read is newer than what it found.
                        event = self._consider(stored) if sub.delivered == heard else None
                        if event is not None:
                            yield event
                        yield KeyEvent(None, synced=True)
                if self._reread_at is not None:
                    get_at, self._reread_at = min(get_at, self._reread_at), None
                try:
                    async with asyncio.timeout(max(get_at - time.monotonic(), 0.0)):
                        item = await queue.get()
                except TimeoutError:
                    continue
                if item is _RECONNECTED:
                    get_at = 0.0
                elif (event := self._heard(item)) is not None:
                    yield event
        finally:
            reconnects.remove(queue)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(sub.unsubscribe()), 2)

    def _heard(self, item: object) -> KeyEvent[T] | None:
        if not isinstance(item, Msg):
            return None  # a reconnect marker met while draining: a read is about to run
        return self._consider(_payload(item))

    def _consider(self, data: bytes | None) -> KeyEvent[T] | None:
        """The event to report for payload ``data`` (None: absent), or None to report nothing."""
        if data is None:
            if self._held is None and self._reported:
                return None
            self._held, self._reported = None, True
            return KeyEvent(None)
        if self._held is not None and data == self._held[1]:
            return None  # the same payload again (a replay or a resync)
        if data == self._bad:
            return None  # counted once already
        try:
            if self._verifier is not None:
                value = self._verifier.open_as(data, self.typ)
            else:
                value = codec.decode(data, self.typ)
        except WireError as e:  # signed_doc.Refused included: the held value stays
            self._bad = data
            if self._on_bad_value is not None:
                self._on_bad_value(self.key, e)
            return None
        version = self._version(value) if self._version is not None else None
        if version is not None and self._held is not None:
            held = self._held[0]
            if held is not None and version <= held:
                return None  # never backwards
        self._held, self._reported = (version, data), True
        return KeyEvent(value)


async def direct_get(nc: NATS, bucket: str, key: str, *, timeout: float = 2.0) -> bytes | None:
    """The stored value of ``key`` by a direct get (no consumer); None: absent or deleted.

    Raises:
        Unavailable: the server answered with a status other than "no message" (for example
            no bucket, or a bucket without ``allow_direct``).
        nats.errors.Error: NATS did not answer (no responders, timeout, closed).
    """
    subject = f"$KV.{bucket}.{key}"
    msg = await nc.request(f"$JS.API.DIRECT.GET.KV_{bucket}.{subject}", b"", timeout=timeout)
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        desc = headers.get("Description", "")
        raise Unavailable(f"direct get of {subject}: status {status} {desc}".rstrip())
    return _payload(msg)


def _payload(msg: Msg) -> bytes | None:
    """The value a KV message carries; None for a delete or purge marker."""
    if (msg.headers or {}).get("KV-Operation") in _DELETE_OPS:
        return None
    return bytes(msg.data)


def _report(error: Exception, failing: bool, on_retry: Callable[[Exception], None] | None) -> bool:
    """Report the first failure of an outage; returns that an outage is on."""
    if not failing:
        (on_retry or _log_retry)(error)
    return True


def _log_retry(error: Exception) -> None:
    _log.warning("key read failed; retrying", extra={"error": repr(error)})
