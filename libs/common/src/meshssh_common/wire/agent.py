"""The agent socket protocol: one JSON object per line each way (msgspec, tagged by ``op``).

A client connects to :data:`SOCKET_NAME` in the agent's state dir and sends requests, one per
line; the agent answers each with one line, in order. Who is asking comes from the kernel
(``SO_PEERCRED``), never from the message: token calls act on the caller's own uid, and
``down``/``configure`` are allowed only to root and to the user the agent runs as.

Requests (``op``):

- ``status`` (``detail``): the agent's state → :class:`StatusReply` (to anyone but root and
  the agent's own user without ``nats_url``: the bus is not theirs to reach);
- ``down``: stop the agent and its children → :class:`OkReply` (sent before stopping);
- ``configure`` (``flags``): new local flags, reported to management as metadata, sshd
  restarted with them → :class:`OkReply`;
- ``token-get``: the caller's cached JWT → :class:`TokenReply` (``token`` empty when none);
  with ``login``: when none is cached, run (or join) the caller's device flow: one
  :class:`PromptReply` line with the URL and code to show, then the :class:`TokenReply`
  once the user has signed in (callers of one uid share one flow; a caller that hangs up
  leaves it, and the flow stops when nobody waits any more);
- ``token-put`` (``token``): cache the caller's JWT → :class:`TokenReply` (``cached`` false
  when the TTL is 0 or the token is already too old);
- ``token-drop``: forget the caller's JWT → :class:`OkReply`;
- ``token-exchange`` (``target_peer``): a per-peer token for one connection to that peer
  (SPEC §6): first as ``token-get`` with ``login`` (same prompt lines, same single flight),
  then the IdP token is exchanged at authn over the bus → :class:`TokenReply` holding the
  per-peer token (``cached`` always false: it is never kept, one exchange per connection).

Any failure → :class:`ErrorReply` with a ``code`` (``bad_request``, ``denied``, ``internal``;
``unavailable`` and ``rate_limited`` from the exchange).

Example (with ``socat``)::

    $ echo '{"op":"status"}' | socat - UNIX-CONNECT:"$STATE_DIR/$SOCKET_NAME"
    {"type":"status","status":{...}}
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from meshssh_common.wire import PeerFlags, SessionInfo
from meshssh_common.wire.base import PeerId

__all__ = [
    "MAX_LINE",
    "SOCKET_NAME",
    "AgentStatus",
    "ChildStatus",
    "ConfigureRequest",
    "DownRequest",
    "ErrorReply",
    "OkReply",
    "PeerStatus",
    "PeerTokenRequest",
    "PromptReply",
    "Reply",
    "Request",
    "StatusReply",
    "StatusRequest",
    "TokenDropRequest",
    "TokenGetRequest",
    "TokenPutRequest",
    "TokenReply",
]

SOCKET_NAME = "agent.sock"  # in the agent's state dir
MAX_LINE = 64 * 1024  # a request longer than this is refused and the connection closed


class _Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of the requests; the tag is the ``op``."""


class StatusRequest(_Request, frozen=True, tag="status"):
    """The agent's state; ``detail`` adds peers and sessions."""

    detail: bool = False


class DownRequest(_Request, frozen=True, tag="down"):
    """Stop the agent and every child."""


class ConfigureRequest(_Request, frozen=True, tag="configure"):
    """Change the local flags of SPEC §3 while running."""

    flags: PeerFlags


class TokenGetRequest(_Request, frozen=True, tag="token-get"):
    """The caller's cached JWT; with ``login``, sign in when none is cached."""

    login: bool = False


class TokenPutRequest(_Request, frozen=True, tag="token-put"):
    """Cache the caller's JWT."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=16384)]


class TokenDropRequest(_Request, frozen=True, tag="token-drop"):
    """Forget the caller's JWT."""


class PeerTokenRequest(_Request, frozen=True, tag="token-exchange"):
    """A per-peer token for one connection to ``target_peer`` (signs in when needed)."""

    target_peer: PeerId


Request = (
    StatusRequest
    | DownRequest
    | ConfigureRequest
    | TokenGetRequest
    | TokenPutRequest
    | TokenDropRequest
    | PeerTokenRequest
)


class ChildStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised process."""

    name: str
    state: str
    wanted: bool = False
    pid: int = 0
    restarts: int = 0
    last_exit: int | None = None
    last_error: str = ""
    ops_url: str = ""


class PeerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A remote peer from the map; ``online`` None while not yet known."""

    id: str
    name: str
    mesh_ip: str
    ssh_enabled: bool = False
    online: bool | None = None
    host_key: str = ""


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``meshssh status`` shows."""

    pid: int
    version: str
    state_dir: str
    name: str
    mesh_ip: str
    management_url: str = ""
    nats_url: str = ""
    nats_connected: bool = False
    registered: bool = False
    register_error: str = ""
    peer_id: str = ""
    serial: int = 0
    flags: PeerFlags = msgspec.field(default_factory=PeerFlags)
    ssh_enabled: bool = False  # the management switch, from the map
    ssh_running: bool = False
    ssh_port: int = 0
    relay_mode: str = "off"
    relay_mode_reason: str = ""
    relay_port: int = 0
    relay_running: bool = False
    native_upstream: str = ""
    ops_url: str = ""  # the agent's /healthz, /readyz and /metrics
    children: tuple[ChildStatus, ...] = ()
    peers: tuple[PeerStatus, ...] = ()
    sessions: tuple[SessionInfo, ...] = ()


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of the replies."""


class StatusReply(_Reply, frozen=True, tag="status"):
    """Answer to ``status``."""

    status: AgentStatus


class OkReply(_Reply, frozen=True, tag="ok"):
    """Answer to ``down``, ``configure`` and ``token-drop``."""

    message: str = ""


class TokenReply(_Reply, frozen=True, tag="token"):
    """Answer to ``token-get``, ``token-put`` and ``token-exchange`` (the per-peer token)."""

    token: str = ""
    expires_at: float = 0.0
    cached: bool = False


class PromptReply(_Reply, frozen=True, tag="prompt"):
    """An intermediate line of a login (``token-get``, ``token-exchange``): what to do."""

    url: str
    code: str
    url_complete: str = ""
    expires_in: int = 0


class ErrorReply(_Reply, frozen=True, tag="error"):
    """A refused or failed request."""

    code: str
    message: str


Reply = StatusReply | OkReply | TokenReply | PromptReply | ErrorReply
