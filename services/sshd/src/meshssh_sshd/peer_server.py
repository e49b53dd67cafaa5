"""The per-connection SSH server: authentication, authorization and channel decisions.

asyncssh creates one :class:`PeerServer` per connection the gate let through and calls its
hooks in this order: ``connection_made`` → ``begin_auth`` (per user name) →
``validate_password`` / ``get_kbdint_challenge`` + ``validate_kbdint_response`` (JWT mode) →
``auth_completed`` → ``session_requested`` / ``connection_requested`` / ``server_requested``
for each channel or forward (``agent_allowed`` / ``agent_socket_needed`` for ``ssh -A``) →
``connection_lost``. Refusals are logged with their reason, counted and audited; the client
sees only the refusal's public text and its bounded reason label, as an auth banner
(:mod:`meshssh_common.refusal_banner`), so ``meshssh ssh`` and the proxy can stop at once
with "Permission denied" and what to check.

In machine-identity mode (``--disable-ssh-auth``) ``none`` succeeds for any valid local user;
the account rules (root, unknown users) still apply.

Example::

    await asyncssh.run_server(sock, options=opts,
                              server_factory=lambda: PeerServer(core, origin, "c42"))
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Awaitable, Sequence
from typing import Any

import asyncssh

from meshssh_common.errors import Denied
from meshssh_common.refusal_banner import refusal_banner
from meshssh_sshd.accounts import Account
from meshssh_sshd.agent_socket import AGENT_REFUSED, AgentSocket
from meshssh_sshd.auth import Identity
from meshssh_sshd.browser_check import Challenge, DeviceFlow
from meshssh_sshd.core import SshdCore
from meshssh_sshd.forwarding import Forwarding, RemoteListener
from meshssh_sshd.origin import Origin
from meshssh_sshd.refusal import Refused, label_of
from meshssh_sshd.session import SessionChannel
from meshssh_sshd.sessions import LiveConnection

__all__ = ["REVOKED", "PeerServer"]

REVOKED = "access revoked"
_PREAUTH_ABUSE = (
    asyncssh.ProtocolError,
    asyncssh.ProtocolNotSupported,
    asyncssh.KeyExchangeFailed,
    asyncssh.MACError,
)
_LOGIN_TIMEOUT = "Login timeout expired"  # asyncssh's ConnectionLost text


def _preauth_abuse(exc: Exception | None) -> bool:
    """A pre-auth failure that is the client's doing (not a clean close, e.g. a banner probe)."""
    if isinstance(exc, asyncssh.ConnectionLost):
        return str(exc) == _LOGIN_TIMEOUT
    return isinstance(exc, _PREAUTH_ABUSE)


_NO_POLICY = frozenset({"no_map", "no_jwt_config", "no_keys"})
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _quickack(conn: asyncssh.SSHServerConnection) -> None:
    """Re-arm TCP_QUICKACK after every read (measured: 64 → 19 ms per connection).

    OpenSSH clients leave Nagle on for non-interactive sessions, so a delayed ACK here stalls
    each small handshake packet by 40 ms. The kernel drops quick-ACK mode on its own, hence
    the re-arm on each read.
    """
    sock = conn.get_extra_info("socket")
    if (
        _TCP_QUICKACK is None
        or sock is None
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
    ):
        return
    received = conn.data_received

    def data_received(data: bytes, datatype: Any = None) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        received(data, datatype)

    conn.data_received = data_received  # type: ignore[method-assign]


class PeerServer(asyncssh.SSHServer):
    """One client connection's authentication and channel policy."""

    def __init__(self, core: SshdCore, origin: Origin, conn_id: str) -> None:
        self._core = core
        self._origin = origin
        self._id = conn_id
        self._log = core.log.bind(conn=conn_id, client=origin.label)
        self._conn: asyncssh.SSHServerConnection | None = None  # connection_made
        self._record: LiveConnection | None = None  # connection_made
        self._username = ""  # begin_auth
        self._account: Account | None = None  # begin_auth: the account the user runs as
        self._refusal: Denied | None = None  # begin_auth: the account itself was refused
        self._flow: DeviceFlow | None = None  # get_kbdint_challenge
        self._forwarding: Forwarding | None = None  # auth_completed
        self._agent: AgentSocket | None = None  # agent_socket_needed (first ssh -A request)
        self._banners: set[str] = set()
        self._channels: weakref.WeakSet[SessionChannel] = weakref.WeakSet()
        self._startup = True  # counted in core.startups until authenticated or closed

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Register the connection and arm quick ACKs (first hook asyncssh calls)."""
        self._conn = conn
        _quickack(conn)
        self._record = self._core.live.add(self._id, self._origin, self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection (last hook; its channels closed before)."""
        self._core.live.remove(self._id)
        if self._startup and _preauth_abuse(exc):
            # Garbage, a wrong protocol or a login that timed out: penalize the source (the
            # gate refuses it with backoff once it has too many), as OpenSSH's
            # PerSourcePenalties do. A clean close (a banner probe) is not penalized.
            self._core.limiter.penalize(self._origin.client_ip)
            self._core.metrics.preauth_failures.labels(reason=type(exc).__name__).inc()
        self._end_startup()
        if self._agent is not None:
            self._agent.close()  # after asyncssh closed the channels: nothing uses it now
        if self._record is not None and self._record.authenticated:
            self._core.metrics.active_connections.dec()
        self._log.debug("connection closed", extra={"error": repr(exc) if exc else ""})

    def _end_startup(self) -> None:
        if self._startup:
            self._startup = False
            self._core.startup_ended(self._origin.client_ip)

    def revoke(self, reason: str) -> None:
        """Close this connection with ``access revoked`` (shown on each session's stderr)."""
        for channel in list(self._channels):
            channel.notify(f"meshssh: {REVOKED}: {reason}")
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, REVOKED)

    def shutdown(self) -> None:
        """Close this connection because the server stops."""
        for channel in list(self._channels):
            channel.notify("meshssh: the SSH server on this peer is shutting down")
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, "server shutting down")

    # -- authentication -----------------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        """Resolve the account; False (no auth needed) only in machine-identity mode."""
        core = self._core
        self._username, self._account, self._refusal = username, None, None
        if core.limiter.blocked(self._origin.client_ip, username[:64]):
            self._reject(_rate_limited(), "none")
            self._refusal = _rate_limited()
            return True
        try:
            self._account = await asyncio.to_thread(core.accounts.resolve, username)
        except Refused as e:
            self._refusal = e
            self._reject(e, "none")
            return True
        if not core.jwt_mode:
            self._accept(Identity("", "none"))
            return False
        return True

    def password_auth_supported(self) -> bool:
        """Password auth carries the JWT; offered in JWT mode only."""
        return self._core.jwt_mode

    def kbdint_auth_supported(self) -> bool:
        """The browser check; offered in JWT mode only."""
        return self._core.jwt_mode

    async def validate_password(self, username: str, password: str) -> bool:
        """The password is the user's JWT."""
        if self._refusal is not None:
            return False
        return await self._check_token(password, "password")

    async def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> Challenge | bool:
        """Start the browser check and show its URL and code (False: refused outright)."""
        if self._refusal is not None:
            return False
        netmap = self._core.maps.current
        self._flow = await self._core.browser.start(
            username, self._origin, peer_name=netmap.peer.name if netmap is not None else ""
        )
        return self._core.browser.challenge(self._flow)

    async def validate_kbdint_response(
        self, username: str, responses: Sequence[str]
    ) -> Challenge | bool:
        """A pasted token, or Enter after the browser login (then poll authn)."""
        method = "keyboard-interactive"
        answer = responses[0].strip() if responses else ""
        if answer:
            return await self._check_token(answer, method)
        if self._flow is None:
            self._reject(
                Refused(
                    "browser_unavailable",
                    "no device flow and no pasted token",
                    public="Authentication failed: paste a token from `meshssh login`",
                ),
                method,
            )
            return False
        try:
            token = await self._core.browser.wait_for_token(self._flow)
        except Refused as e:
            self._reject(e, method)
            return False
        if token is None:
            return self._core.browser.challenge(self._flow, again=True)
        return await self._check_token(token, method)

    def auth_completed(self) -> None:
        """Mark the connection authenticated (called once, after a method succeeded)."""
        record, account = self._record, self._account
        assert record is not None
        assert account is not None
        record.authenticated = True
        self._end_startup()
        self._core.metrics.active_connections.inc()
        self._forwarding = Forwarding(self._core, record, account, self._log)

    async def _check_token(self, token: str, method: str) -> bool:
        core = self._core
        if core.limiter.blocked(self._origin.client_ip, self._username[:64]):
            self._reject(_rate_limited(), method)
            return False
        try:
            identity = await core.auth.check_token(token, self._username, method=method)
        except Denied as e:
            self._reject(e, method)
            return False
        except Exception:
            self._log.exception("token check failed unexpectedly")
            self._reject(
                Refused(
                    "error",
                    "unexpected error",
                    public="Authentication failed: internal error; try again",
                ),
                method,
            )
            return False
        self._accept(identity)
        return True

    def _accept(self, identity: Identity) -> None:
        core, record, account = self._core, self._record, self._account
        assert record is not None
        assert account is not None
        record.local_user = account.name
        record.jwt_user = identity.user_id
        record.rules = identity.rules
        core.limiter.succeeded(self._origin.client_ip, self._username[:64])
        core.metrics.auth.labels(method=identity.method, result="accept").inc()
        core.audit.emit(
            "auth-accepted",
            local_user=account.name,
            jwt_user=identity.user_id,
            source_addr=self._origin.label,
            method=identity.method,
            result="accept",
            email=identity.email,
            name=identity.name,
            **self._origin.peer_fields(),
        )
        self._log.info(
            "auth accepted",
            extra={
                "user": account.name,
                "jwt_user": identity.user_id,
                "method": identity.method,
                "switch": account.switch,
                "via_relay": self._origin.via_relay,
            },
        )

    def _reject(self, error: Exception, method: str) -> None:
        core = self._core
        label = label_of(error)
        result = "no_policy" if label in _NO_POLICY else "error" if label == "error" else "reject"
        core.metrics.auth.labels(method=method, result=result).inc()
        core.metrics.auth_rejects.labels(reason=label).inc()
        if result == "reject" and label != "rate_limited":
            core.limiter.record(self._origin.client_ip, self._username[:64])
        core.audit.emit(
            "auth-rejected",
            local_user=self._username[:64],
            source_addr=self._origin.label,
            method=method,
            result=result,
            reason=label,
            jwt_user=error.user_id if isinstance(error, Refused) else "",
            **self._origin.peer_fields(),
        )
        self._log.info(
            "auth rejected",
            extra={
                "user": self._username[:64],
                "method": method,
                "reason": label,
                "detail": str(error),
            },
        )
        public = error.public if isinstance(error, Denied) else "Permission denied"
        banner = refusal_banner(public, label)
        if banner not in self._banners and self._conn is not None:
            self._banners.add(banner)
            with contextlib.suppress(OSError):
                self._conn.send_auth_banner(banner)

    # -- agent forwarding (AgentConnection asks) ------------------------------------------------

    def agent_allowed(self) -> bool:
        """An ``auth-agent-req`` arrived: allowed only with --enable-ssh-agent-forwarding.

        When refused, the next session shows "Agent forwarding not available" on stderr
        (OpenSSH sends the request without asking for a reply, so a refusal is otherwise
        silent).
        """
        record = self._record
        if self._core.settings.enable_ssh_agent_forwarding:
            return True
        self._core.metrics.forwards.labels(kind="agent", result="refused").inc()
        if record is not None and AGENT_REFUSED not in record.notices:
            record.notices.append(AGENT_REFUSED)
            self._log.info("agent forwarding refused: flag off")
        return False

    async def agent_socket_needed(self, conn: asyncssh.SSHServerConnection) -> bool:
        """Make this connection's agent socket for the account (once; later requests reuse it)."""
        record, account = self._record, self._account
        if record is None or account is None:
            return False
        if self._agent is not None:
            return True
        try:
            self._agent = await self._core.agents.open(conn, account)
        except OSError as e:
            self._core.metrics.forwards.labels(kind="agent", result="failed").inc()
            self._log.warning("agent socket not created", extra={"error": repr(e)})
            return False
        record.agent_path = self._agent.path
        self._core.metrics.forwards.labels(kind="agent", result="opened").inc()
        self._log.info("agent forwarding on", extra={"user": account.name})
        return True

    # -- channels -----------------------------------------------------------------------------

    def session_requested(self) -> SessionChannel:
        """Open a session channel, within the drain and max-sessions limits."""
        core, record, account = self._core, self._record, self._account
        assert record is not None
        assert account is not None
        if core.draining:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "the server is shutting down"
            )
        if core.open_sessions >= core.settings.max_sessions:
            self._log.warning(
                "session refused: limit reached", extra={"limit": core.settings.max_sessions}
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, "too many sessions on this peer; try later"
            )
        channel = SessionChannel(core, record, account)
        self._channels.add(channel)
        return channel

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """A ``direct-tcpip`` channel (``-L``, ``-D``): refused, or a coroutine that connects."""
        assert self._forwarding is not None
        return self._forwarding.open_direct(dest_host, dest_port, orig_host, orig_port)

    async def server_requested(self, listen_host: str, listen_port: int) -> RemoteListener | bool:
        """A ``tcpip-forward`` request (``-R``): a listener, or False (notice on stderr)."""
        assert self._forwarding is not None
        assert self._conn is not None
        listener = await self._forwarding.open_remote(self._conn, listen_host, listen_port)
        if listener is False:
            # No text travels with a refused global request: show it on the sessions.
            record = self._record
            assert record is not None
            for channel in list(self._channels):
                for notice in record.notices:
                    channel.notify(notice)
            if self._channels:
                record.notices.clear()
        return listener

    def unix_connection_requested(self, dest_path: str) -> bool:
        """Unix-socket forwarding is not offered."""
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        """Unix-socket forwarding is not offered."""
        return False


def _rate_limited() -> Refused:
    return Refused(
        "rate_limited",
        "too many failed logins from this source",
        public="Permission denied: too many failed logins from your address for this user; "
        "wait a minute and try again (each further failure doubles the wait)",
    )
