"""Device-flow grants (RFC 8628) of the embedded provider, shared by replicas through KV.

A grant is stored under its user code (``uc.<CODE>``), and a pointer under the SHA-256 of
its device code (``dc.<hash>``), so the device code itself is never stored. Every state
change is a compare-and-set write, so a grant is approved once and yields exactly one token
even when two replicas answer polls for it at once.

Lifecycle: ``pending`` → ``approved`` (login page) → ``consumed`` (token handed out);
``pending`` → ``denied`` (the user refused it). Expired grants are refused, then the
bucket's TTL forgets them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from meshssh_common import subjects
from meshssh_common.errors import BadRequest, Conflict, NotFound
from meshssh_common.kv import TypedKV

__all__ = [
    "DeviceContext",
    "DeviceGrant",
    "DeviceGrants",
    "DevicePointer",
    "PollStatus",
    "StartedGrant",
    "normalize_user_code",
]

# RFC 8628 §6.1: consonants only (no vowels: no words; no look-alikes), 8 characters,
# shown as XXXX-XXXX: 20^8 ≈ 2.6e10 codes.
_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
_CODE_LEN = 8
_DECIDE_TRIES = 5
_SLOW_DOWN_STEP = 5

PollStatus = Literal["ok", "pending", "slow_down", "denied", "expired"]


class DeviceContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a grant would approve, as the SSH server that started it described it."""

    server_peer: str = ""
    server_peer_name: str = ""
    local_user: str = ""
    source_addr: str = ""
    source_peer: str = ""
    source_peer_name: str = ""


class DeviceGrant(msgspec.Struct, frozen=True, kw_only=True):
    """One device authorization, stored under its user code."""

    user_code: str
    device_hash: str
    client_id: str
    scope: str
    created_at: float
    expires_at: float
    interval: int
    status: Literal["pending", "approved", "denied", "consumed"] = "pending"
    username: str = ""
    next_poll_at: float = 0.0
    context: DeviceContext | None = None  # None: started by `meshssh login` (no server yet)


class DevicePointer(msgspec.Struct, frozen=True, kw_only=True):
    """Stored under the device code's hash: which user code it belongs to."""

    user_code: str


@dataclass(frozen=True, slots=True)
class StartedGrant:
    """What the device authorization endpoint returns."""

    device_code: str
    user_code: str  # display form, XXXX-XXXX
    expires_in: int
    interval: int


def normalize_user_code(text: str) -> str:
    """Upper-case ``text`` and drop separators; '' if it cannot be a user code."""
    code = "".join(c for c in text.upper() if c.isalnum())
    if len(code) != _CODE_LEN or any(c not in _ALPHABET for c in code):
        return ""
    return code


def _display(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _hash(device_code: str) -> str:
    return hashlib.sha256(device_code.encode()).hexdigest()[:48]


class DeviceGrants:
    """Start, approve and poll device grants kept in a KV bucket."""

    def __init__(
        self,
        grants: TypedKV[DeviceGrant],
        pointers: TypedKV[DevicePointer],
        *,
        ttl: int,
        interval: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._grants = grants
        self._pointers = pointers
        self._ttl = ttl
        self._interval = interval
        self._clock = clock

    async def start(
        self, client_id: str, scope: str, context: DeviceContext | None = None
    ) -> StartedGrant:
        """Create a pending grant with fresh device and user codes."""
        device_code = secrets.token_urlsafe(32)
        device_hash = _hash(device_code)
        now = self._clock()
        for _ in range(5):
            code = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_LEN))
            grant = DeviceGrant(
                user_code=code,
                device_hash=device_hash,
                client_id=client_id,
                scope=scope,
                created_at=now,
                expires_at=now + self._ttl,
                interval=self._interval,
                context=context,
            )
            try:
                await self._grants.create(subjects.user_code_key(code), grant)
            except Conflict:
                continue  # that user code is taken; draw another
            await self._pointers.create(
                subjects.device_code_key(device_hash), DevicePointer(user_code=code)
            )
            return StartedGrant(device_code, _display(code), self._ttl, self._interval)
        raise Conflict("could not draw a free user code")

    async def pending(self, user_code: str) -> DeviceGrant:
        """The pending, unexpired grant for ``user_code`` (any spelling).

        Raises:
            NotFound: no such code, or it expired or was already used.
        """
        code = normalize_user_code(user_code)
        entry = await self._grants.get(subjects.user_code_key(code)) if code else None
        if entry is None or entry.value.status != "pending":
            raise NotFound("unknown or used code")
        if self._clock() >= entry.value.expires_at:
            raise NotFound("expired code")
        return entry.value

    async def decide(self, user_code: str, username: str, *, approve: bool) -> DeviceGrant:
        """Approve (for ``username``) or deny a pending grant.

        Raises:
            NotFound: no such pending, unexpired code.
            Conflict: it was decided concurrently.
        """
        code = normalize_user_code(user_code)
        # The client's polls rewrite a pending grant (next_poll_at), so a decision that raced
        # one reads again: only a decision made by someone else ends in Conflict.
        for _ in range(_DECIDE_TRIES):
            entry = await self._grants.get(subjects.user_code_key(code)) if code else None
            if entry is None or entry.value.status != "pending":
                raise NotFound("unknown or used code")
            if self._clock() >= entry.value.expires_at:
                raise NotFound("expired code")
            decided = msgspec.structs.replace(
                entry.value, status="approved" if approve else "denied", username=username
            )
            try:
                await self._grants.update(
                    subjects.user_code_key(code), decided, last=entry.revision
                )
            except Conflict:
                continue
            return decided
        raise Conflict("the grant kept changing while it was being decided")

    async def poll(self, device_code: str, client_id: str) -> tuple[PollStatus, DeviceGrant | None]:
        """One poll of the token endpoint for ``device_code``.

        Returns:
            ``("ok", grant)`` exactly once, for an approved grant (now consumed); otherwise a
            status and the grant (``pending``, ``slow_down``, ``denied``) or None
            (``expired``: unknown, expired or already consumed).

        Raises:
            BadRequest: the device code belongs to another client.
        """
        pointer = await self._pointers.get(subjects.device_code_key(_hash(device_code)))
        if pointer is None:
            return "expired", None
        key = subjects.user_code_key(pointer.value.user_code)
        entry = await self._grants.get(key)
        if entry is None or entry.value.device_hash != _hash(device_code):
            return "expired", None
        grant = entry.value
        if grant.client_id != client_id:
            raise BadRequest("device code was issued to another client")
        now = self._clock()
        if now >= grant.expires_at or grant.status == "consumed":
            return "expired", None
        if grant.status == "denied":
            return "denied", grant
        if grant.status == "approved":
            consumed = msgspec.structs.replace(grant, status="consumed")
            try:
                await self._grants.update(key, consumed, last=entry.revision)
            except Conflict:
                return "slow_down", grant  # a concurrent poll is collecting it
            return "ok", grant
        status: PollStatus = "pending"
        interval = grant.interval
        if now < grant.next_poll_at:
            status, interval = "slow_down", grant.interval + _SLOW_DOWN_STEP
        # Early polls within a quarter interval are tolerated (timer jitter, clock steps).
        updated = msgspec.structs.replace(
            grant, interval=interval, next_poll_at=now + interval * 0.75
        )
        try:
            await self._grants.update(key, updated, last=entry.revision)
        except Conflict:
            return "slow_down", grant
        return status, updated
