"""Dashboard sign-ins: server-side sessions behind an opaque cookie, each with a CSRF token.

The cookie (``meshssh_session``) is HttpOnly, SameSite=Lax, and Secure when the dashboard's
public URL is https. It holds only a random id; the session (user, admin or not, CSRF token,
expiry, and the user's IdP token from the sign-in when the mesh accepts it, for browser
terminals) stays in this replica's memory, so logout ends it for good: the same cookie is dead
afterwards. Behind several policy replicas, route a browser to one replica (session
affinity). Memory is bounded: the oldest sessions go first.

Example::

    store = SessionStore(ttl=8 * 3600)
    sid, session = store.create(user="alice", admin=True)
    store.get(sid)          # None once expired or dropped
    store.drop(sid)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE", "MeshToken", "Session", "SessionStore", "session_hash"]

COOKIE = "meshssh_session"
_MAX_SESSIONS = 10_000


def session_hash(sid: str) -> str:
    """The hex SHA-256 of a session cookie value (what a browser terminal ticket keeps)."""
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MeshToken:
    """The user's IdP token as the mesh accepts it (authn's exchange, sshd), and its profile.

    ``usable_until`` (wall clock) is the earlier of its ``exp`` and ``iat`` + the mesh's
    maximum token age: after it, a browser terminal needs a new sign-in.
    """

    token: str
    usable_until: float
    email: str = ""


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser."""

    user: str
    admin: bool
    csrf: str
    expires: float
    name: str = ""
    mesh_token: MeshToken | None = None  # None: the sign-in gave no token the mesh accepts

    def csrf_ok(self, presented: str) -> bool:
        """True when ``presented`` is this session's CSRF token."""
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by cookie id, in memory."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(
        self, *, user: str, admin: bool, name: str = "", mesh_token: MeshToken | None = None
    ) -> tuple[str, Session]:
        """A new session; returns the cookie value and the session."""
        now = self._clock()
        if len(self._sessions) >= _MAX_SESSIONS:
            for sid in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[sid]
            while len(self._sessions) >= _MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        session = Session(
            user=user,
            admin=admin,
            csrf=secrets.token_urlsafe(32),
            expires=now + self._ttl,
            name=name,
            mesh_token=mesh_token,
        )
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        """The live session of cookie ``sid``."""
        session = self._sessions.get(sid) if sid else None
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[sid]
            return None
        return session

    def drop(self, sid: str) -> None:
        """End a session (logout)."""
        self._sessions.pop(sid, None)
