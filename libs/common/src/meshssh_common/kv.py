"""Typed JetStream KV access: get, put, create, compare-and-set update, delete and watch.

Values are wire messages encoded with :mod:`meshssh_common.codec`. A value that does not
decode is reported as a :class:`WireError` by :meth:`TypedKV.get`, and counted and skipped by
:meth:`TypedKV.watch`, so one bad entry never stops a watcher.

Example::

    kv = await open_bucket(js, subjects.BUCKET_NETMAPS)
    maps = TypedKV(kv, NetworkMap)                   # or signer=/verifier= for signed values
    entry = await maps.get("peer.p1")
    await maps.update("peer.p1", new_map, last=entry.revision)   # Conflict if it moved
    async for ev in maps.watch("peer.p1"):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from meshssh_common import codec
from meshssh_common.errors import Conflict, Unavailable, WireError
from meshssh_common.kv_watcher import KvWatcher
from meshssh_common.signed_doc import Signer, Verifier

__all__ = [
    "Encoded",
    "KvEntry",
    "KvEvent",
    "TypedKV",
    "default_replicas",
    "open_bucket",
    "set_default_replicas",
]

T = TypeVar("T")

_DELETE_OPS = ("DEL", "PURGE")
_SNAPSHOT_LINGER = 5.0
# Failures of a watch that mean "NATS is away": follow() retries these and raises the rest.
_OUTAGE = (nats.errors.Error, TimeoutError, OSError, Unavailable)
_log = logging.getLogger(__name__)
_WRONG_LAST_SEQUENCE = (10071, 10164)
_replicas = [1]  # what open_bucket and ensure_audit_stream create with (--nats-replicas)


def set_default_replicas(replicas: int) -> None:
    """The JetStream replicas of what this process creates from now on (``--nats-replicas``).

    One setting per process, set by the service runner from ``ServiceSettings.nats_replicas``
    before ``serve`` runs, so no call site has to pass it along. 3 on a 3-node cluster.
    """
    if not 1 <= replicas <= 5:
        raise ValueError(f"replicas must be 1..5, got {replicas}")
    _replicas[0] = replicas


def default_replicas() -> int:
    """The replicas :func:`set_default_replicas` set (1 unless told)."""
    return _replicas[0]


async def open_bucket(
    js: JetStreamContext,
    name: str,
    *,
    history: int = 1,
    replicas: int | None = None,
    storage: StorageType = StorageType.FILE,
    ttl: float | None = None,
    direct: bool = True,
    consistent: bool = False,
) -> KeyValue:
    """Open a KV bucket, creating it (file storage) when it does not exist yet.

    ``ttl`` (seconds), when given, makes a created bucket forget values that old.
    ``direct`` makes the bucket answer direct gets (``allow_direct``: what
    :class:`~meshssh_common.key_watch.KeyWatch` reads with, no consumer needed); an existing
    bucket made without it is updated to allow them (when this identity may: a refusal is
    logged, not raised). ``replicas`` (None: :func:`default_replicas`) is the JetStream
    replication of a created bucket; an existing bucket with fewer is raised to it the same
    way (R1 to R3 when a single server became a cluster), never lowered.

    ``consistent``: this handle reads from the stream's leader, never with a direct get. On a
    replicated bucket a direct get may be answered by a follower that has not applied the
    latest write yet; a writer that reads its own writes (compare-and-set, then verify) needs
    the leader. Peers' direct gets are unaffected (they are a property of the bucket).

    Concurrent creators are safe: the server treats an identical create as idempotent.

    Raises:
        Unavailable: JetStream did not answer.
    """
    replicas = default_replicas() if replicas is None else replicas
    try:
        try:
            info = await js.stream_info(_stream(name))
        except nats.js.errors.NotFoundError:
            created = await js.create_key_value(
                KeyValueConfig(
                    bucket=name,
                    history=history,
                    replicas=replicas,
                    storage=storage,
                    ttl=ttl,
                    direct=direct,
                )
            )
            if not consistent:
                return created
            return KeyValue(
                name=name, stream=_stream(name), pre=f"$KV.{name}.", js=js, direct=False
            )
        wanted = info.config
        if direct and not wanted.allow_direct:
            wanted = dataclasses.replace(wanted, allow_direct=True)
        if (wanted.num_replicas or 1) < replicas:
            wanted = dataclasses.replace(wanted, num_replicas=replicas)
        if wanted != info.config:
            await _update_stream(js, name, wanted)
        kv = await js.key_value(name)
        if consistent:
            kv = KeyValue(name=name, stream=_stream(name), pre=f"$KV.{name}.", js=js, direct=False)
        return kv
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
        raise Unavailable(f"JetStream did not answer opening bucket {name}") from e


def _stream(bucket: str) -> str:
    return f"KV_{bucket}"


async def _update_stream(js: JetStreamContext, name: str, config: StreamConfig) -> None:
    """Give an existing bucket direct gets or more replicas; a refusal is logged, not raised.

    Only the bucket's owner may change it (policy reads ``meshssh-jwks`` but authn owns it):
    the others carry on, and peers' reads fail until the owner has updated it.
    """
    try:
        await js.update_stream(config)
    except nats.errors.Error as e:
        _log.warning(
            "bucket settings could not be updated",
            extra={"bucket": name, "error": repr(e)},
        )
        return
    _log.info(
        "bucket updated",
        extra={
            "bucket": name,
            "allow_direct": config.allow_direct,
            "replicas": config.num_replicas,
        },
    )


class Encoded(bytes):
    """A value already encoded by :meth:`TypedKV.encode` (a writer that needs its size)."""


@contextlib.contextmanager
def _outage(what: str) -> Iterator[None]:
    """Translate "NATS is away" into :class:`Unavailable`, so callers need no nats-py types."""
    try:
        yield
    except (nats.errors.Error, TimeoutError) as e:
        raise Unavailable(f"JetStream did not answer: {what}: {type(e).__name__}") from e


@dataclass(frozen=True, slots=True)
class KvEntry(Generic[T]):
    """A decoded value and the revision it was stored at."""

    key: str
    value: T
    revision: int


@dataclass(frozen=True, slots=True)
class KvEvent(Generic[T]):
    """One watch event; ``value`` is None for a delete.

    ``initial_done`` marks the end of the values that existed when the watch started (such an
    event carries no key).
    """

    key: str
    value: T | None
    revision: int
    initial_done: bool = False


class TypedKV(Generic[T]):
    """A KV bucket whose values are all ``T``."""

    def __init__(
        self,
        kv: KeyValue,
        typ: type[T],
        *,
        on_bad_value: Callable[[str, WireError], None] | None = None,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.kv = kv
        self.typ = typ
        self._on_bad_value = on_bad_value
        self._signer = signer
        self._verifier = verifier

    @property
    def signer(self) -> Signer | None:
        """What this view signs its values with (None: stored as they are)."""
        return self._signer

    def encode(self, value: T) -> Encoded:
        """``value`` encoded as it is stored (signed when this view has a signer)."""
        data = codec.encode(value)
        if self._signer is not None:
            data = codec.encode(self._signer.sign(data))
        return Encoded(data)

    def decode(self, data: bytes) -> T:
        """A stored value decoded (opened first when this view has a verifier).

        Raises:
            WireError: it does not decode; :class:`~meshssh_common.signed_doc.Refused` (a
                WireError) when its signature does not verify.
        """
        if self._verifier is not None:
            return self._verifier.open_as(data, self.typ)
        return codec.decode(data, self.typ)

    async def get(self, key: str) -> KvEntry[T] | None:
        """The current value of ``key``, or None when absent or deleted.

        Raises:
            WireError: the stored value does not decode as ``T``.
            Unavailable: JetStream did not answer.
        """
        with _outage(f"get {key}"):
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
        if entry.value is None or entry.operation in _DELETE_OPS:
            return None
        return KvEntry(key, self.decode(entry.value), int(entry.revision or 0))

    async def put(self, key: str, value: T | Encoded) -> int:
        """Store ``value`` unconditionally; returns the new revision.

        Raises:
            Unavailable: JetStream did not answer.
        """
        with _outage(f"put {key}"):
            return int(await self.kv.put(key, self._bytes(value)))

    async def create(self, key: str, value: T | Encoded) -> int:
        """Store ``value`` only if ``key`` has none.

        Raises:
            Conflict: the key already holds a value.
            Unavailable: JetStream did not answer.
        """
        with _outage(f"create {key}"):
            try:
                return int(await self.kv.create(key, self._bytes(value)))
            except nats.js.errors.KeyWrongLastSequenceError as e:
                raise Conflict(f"{key} already exists") from e

    async def update(self, key: str, value: T | Encoded, *, last: int) -> int:
        """Store ``value`` only if ``key`` is still at revision ``last`` (compare-and-set).

        Raises:
            Conflict: someone else wrote ``key`` since ``last``.
            Unavailable: JetStream did not answer.
        """
        with _outage(f"update {key}"):
            try:
                return int(await self.kv.update(key, self._bytes(value), last=last))
            except nats.js.errors.KeyWrongLastSequenceError as e:
                raise Conflict(f"{key} changed since revision {last}") from e

    async def delete(self, key: str, *, last: int | None = None) -> None:
        """Delete ``key`` (only if still at ``last`` when given).

        Raises:
            Conflict: ``last`` was given and the key moved on.
            Unavailable: JetStream did not answer.
        """
        with _outage(f"delete {key}"):
            try:
                await self.kv.delete(key, last=last)
            except nats.js.errors.KeyWrongLastSequenceError as e:
                raise Conflict(f"{key} changed since revision {last}") from e
            except nats.js.errors.APIError as e:
                # nats-py's delete() does not translate a lost compare-and-set (10071/10164).
                if e.err_code in _WRONG_LAST_SEQUENCE:
                    raise Conflict(f"{key} changed since revision {last}") from e
                raise

    async def erase(self, key: str) -> None:
        """Remove every stored value of ``key`` without leaving a delete marker.

        A stream purge by subject: for keys that are never read again once erased (a map
        snapshot no delta names any more), so that no marker per old key piles up.

        Raises:
            Unavailable: JetStream did not answer.
        """
        kv = self.kv
        with _outage(f"erase {key}"):
            await kv._js.purge_stream(kv._stream, subject=f"{kv._pre}{key}")

    async def keys(self) -> list[str]:
        """Every key that currently holds a value.

        Raises:
            Unavailable: JetStream did not answer.
        """
        with _outage("keys"):
            try:
                return list(await self.kv.keys())
            except nats.js.errors.NoKeysError:
                return []

    def _bytes(self, value: T | Encoded) -> bytes:
        return value if isinstance(value, Encoded) else self.encode(value)

    async def values(self) -> dict[str, KvEntry[T]]:
        """Every current value, decoded; undecodable ones are reported and skipped."""
        out: dict[str, KvEntry[T]] = {}
        async for ev in self.watch(">", initial_only=True):
            if ev.value is not None:
                out[ev.key] = KvEntry(ev.key, ev.value, ev.revision)
        return out

    async def watch(
        self, keys: str = ">", *, initial_only: bool = False
    ) -> AsyncIterator[KvEvent[T]]:
        """Yield the current values of ``keys``, an ``initial_done`` marker, then live changes.

        Args:
            keys: a key or a pattern (``peer.*``, ``>``).
            initial_only: stop after the ``initial_done`` marker (a consistent snapshot).
        """
        # A snapshot's consumer goes 5 s after its last use (nats-py's default keeps every
        # ephemeral watch consumer 5 min: policy's load of the maps stayed on the map bucket).
        # KvWatcher, not nats-py's KeyValue.watch: its consumer heartbeats every 0.5 s, so a
        # watch whose NATS node died resumes within seconds instead of 20 (kv_watcher.py).
        linger = _SNAPSHOT_LINGER if initial_only else None
        watcher = await KvWatcher.start(self.kv, keys, inactive_threshold=linger)
        try:
            async for entry in watcher:
                if entry is None:
                    yield KvEvent("", None, 0, initial_done=True)
                    if initial_only:
                        return
                    continue
                if entry.operation in _DELETE_OPS or entry.value is None:
                    yield KvEvent(entry.key, None, int(entry.revision or 0))
                    continue
                try:
                    value = self.decode(entry.value)
                except WireError as e:
                    if self._on_bad_value is not None:
                        self._on_bad_value(entry.key, e)
                    continue
                yield KvEvent(entry.key, value, int(entry.revision or 0))
        finally:
            # Shield the unsubscribe so a cancelled watcher still releases its consumer, and
            # bound it: during an outage the server may never answer.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(watcher.stop()), 2)

    async def follow(
        self,
        keys: str,
        nc: NATS,
        *,
        check_every: float = 0.5,
        on_retry: Callable[[Exception], None] | None = None,
    ) -> AsyncIterator[KvEvent[T]]:
        """Like :meth:`watch`, forever, restarting the watch after every NATS reconnect.

        After nats-server restarts, a JetStream watch stays silent until its ordered consumer
        notices (two missed heartbeats: ~1 s here, 10 to 20 s with nats-py's own watch). This
        restarts it as soon as the client has reconnected, so the current values and an
        ``initial_done`` marker are yielded again: consumers must treat events idempotently
        (maps: apply only a higher serial). A consumer lost while the client stayed connected
        (its node died) is remade by the heartbeat check (:mod:`meshssh_common.kv_watcher`).

        A watch that fails because NATS is away (a NATS or JetStream error, a timeout, a
        socket error) is reported to ``on_retry`` (a warning in this module's log when None)
        and started again after ``check_every`` seconds. Any other failure is a bug, not an
        outage: it is raised from here with its own type, never swallowed.

        Raises:
            Exception: the watch failed with anything but an outage.
        """
        while True:
            seen = int(nc.stats["reconnects"])
            events: asyncio.Queue[KvEvent[T]] = asyncio.Queue()
            pump = asyncio.create_task(self._pump(keys, events))
            try:
                while int(nc.stats["reconnects"]) == seen:
                    if pump.done() and events.empty():
                        error = pump.exception() or Unavailable(f"the watch of {keys} ended")
                        if not isinstance(error, _OUTAGE):
                            raise error
                        (on_retry or _log_retry)(error)
                        await asyncio.sleep(check_every)
                        break
                    try:
                        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                        # cancellation that races with a completed get().
                        async with asyncio.timeout(check_every):
                            event = await events.get()
                    except TimeoutError:
                        continue
                    yield event
            finally:
                pump.cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, keys: str, events: asyncio.Queue[KvEvent[T]]) -> None:
        async for ev in self.watch(keys):
            await events.put(ev)


def _log_retry(error: Exception) -> None:
    _log.warning("KV watch failed; retrying", extra={"error": repr(error)})
