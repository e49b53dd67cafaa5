"""Dialling a peer's SSH server: from the local mesh address, host key pinned, JWT as password.

Used by both ``meshssh ssh`` and ``meshssh ssh proxy``. Order of a dial:

1. resolve the host through the :class:`~meshssh_cli.ssh.peer_directory.PeerDirectory` (a name or
   mesh address from the current map; anything else is "SSH server not detected");
2. connect TCP from this peer's mesh address (bound explicitly, so a loopback mesh such as
   127.0.0.3 -> 127.0.0.2 behaves like a real one), within the connect timeout;
3. key exchange accepting exactly the host key the management plane pinned (no trust on first
   use); a different key fails with both fingerprints before any credential is sent;
4. ``none`` authentication (machine-identity peers accept it); otherwise, only if the server's
   banner says ``MeshSSH-JWT-Required``, a JWT as password: a per-peer token for this peer,
   made for this one connection (the agent exchanges the user's IdP token at authn, signing
   in first when nothing is cached; SPEC §6). A peer whose id the map does not give gets no
   token at all (fail closed). Only where no agent can exchange (a token source without
   one) the IdP token itself is sent, which only servers run with ``--accept-idp-tokens``
   accept. Waiting for the user's browser does not count against the connect timeout.
   A refused token is final: the server's auth banner says why
   (``MeshSSH-Refusal: <reason>``, :mod:`meshssh_common.refusal_banner`) and the dial fails
   at once with "Permission denied", that reason and what to check; no browser check
   follows. A token the server calls expired is dropped from the agent's cache, so the
   next connection signs in afresh.

A connection the peer closes before its SSH banner was refused at its gate (source not
allowed, SSH off, or too many failed logins): "Permission denied" with what to check.

Example::

    peer = await resolve(link, "demo-server")
    conn = await dial(peer, 22, "alice", link, source=await link.local_mesh_ip())
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh

from meshssh_agent.peers import PeerEntry
from meshssh_cli.ssh import errors as client_errors
from meshssh_cli.ssh.detect import BannerKind, classify
from meshssh_cli.ssh.errors import ClientError
from meshssh_cli.ssh.peer_directory import PeerDirectory, TokenSource
from meshssh_common.mesh_login import open_mesh_socket, pinned_login_options
from meshssh_common.refusal_banner import parse_refusal

__all__ = ["CLIENT_VERSION", "CONNECT_TIMEOUT", "dial", "resolve"]

CLIENT_VERSION = "MeshSSH-Client-0.1.0"
CONNECT_TIMEOUT = 15.0
_STALE = frozenset({"expired", "too_old"})  # refusals that make a cached token useless


async def resolve(directory: PeerDirectory, host: str) -> PeerEntry:
    """The peer named ``host`` (or whose mesh address it is) in the current map.

    Raises:
        ClientError: "SSH server not detected" when the map has no such peer.
    """
    peer = await directory.lookup(host)
    if peer is None:
        raise client_errors.not_detected(host, "not a peer in this peer's network map")
    return peer


@dataclass(eq=False)
class _Backend(asyncssh.SSHClient):
    """Client-side hooks of one dial; records what happened for the error messages.

    ``validate_host_public_key`` runs during key exchange, ``password_auth_requested`` after
    ``none`` failed (and again after the password failed), ``auth_banner_received`` when the
    server explains a refusal, ``connection_lost`` whenever the connection ends.
    """

    peer: PeerEntry
    pinned: asyncssh.SSHKey
    tokens: TokenSource
    deadline: asyncio.Timeout
    on_lost: Callable[[Exception | None], None] | None = None
    presented: asyncssh.SSHKey | None = None  # validate_host_public_key
    conn: asyncssh.SSHClientConnection | None = None  # connection_made
    banner: BannerKind | None = None  # password_auth_requested
    tries: int = 0  # password_auth_requested
    last_cached: bool = False  # password_auth_requested
    sent_idp: bool = False  # password_auth_requested: the IdP token, not a per-peer one
    token_error: str | None = None  # password_auth_requested
    refusal: str | None = None  # auth_banner_received: the server's reason label
    closing: list[Exception | None] = field(default_factory=list)  # connection_lost

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        """The TCP connection is up."""
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing.append(exc)
        if self.on_lost is not None:
            self.on_lost(exc)

    def auth_banner_received(self, msg: str, lang: str) -> None:
        """Keep the reason of a refusal (the banner's ``MeshSSH-Refusal:`` line)."""
        reason = parse_refusal(msg)
        if reason is not None:
            self.refusal = reason

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.presented = key
        return key.public_data == self.pinned.public_data

    async def password_auth_requested(self) -> str | None:
        assert self.conn is not None
        self.banner = classify(str(self.conn.get_extra_info("server_version", "")))
        if self.banner is not BannerKind.MESHSSH_JWT or self.tries > 0:
            return None  # a refused token is final: no second token, no browser check
        if self.refusal is not None:
            return None  # refused before any token (no such user, root, rate limit): keep it
        loop = asyncio.get_running_loop()
        self.deadline.reschedule(None)  # a device flow may wait for the user's browser
        try:
            token = await self.tokens.peer_token(self.peer)
            if token is None:  # no agent to exchange through: the IdP token itself
                token = await self.tokens.get_token()
                self.sent_idp = True
        except (OSError, TimeoutError, RuntimeError) as e:
            self.token_error = str(e) or type(e).__name__
            return None
        finally:
            self.deadline.reschedule(loop.time() + CONNECT_TIMEOUT)
        self.tries += 1
        self.last_cached = token.cached
        return token.value


async def dial(
    peer: PeerEntry,
    port: int,
    username: str,
    tokens: TokenSource,
    *,
    source: str,
    timeout: float = CONNECT_TIMEOUT,
    on_lost: Callable[[Exception | None], None] | None = None,
    **options: object,
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate to ``peer`` (see the module docstring for the steps).

    Args:
        peer: the resolved peer.
        port: the server port (22 reaches sshd through the relay).
        username: the local user to log in as on the peer.
        tokens: where the JWT comes from.
        source: this peer's mesh address, bound as the source address.
        timeout: for TCP connect, key exchange and authentication (token waits excluded).
        on_lost: called with the reason when the connection ends later.
        **options: more :class:`asyncssh.SSHClientConnectionOptions` (window sizes, ...).

    Raises:
        ClientError: with the user-facing text for every failure.
    """
    if not peer.host_key_line.strip():
        raise client_errors.no_host_key(peer.name)
    try:
        pinned = asyncssh.import_public_key(peer.host_key_line)
    except (asyncssh.KeyImportError, ValueError):
        raise client_errors.no_host_key(peer.name) from None
    sock: socket.socket | None = None
    backend: _Backend | None = None
    try:
        async with asyncio.timeout(timeout) as deadline:
            sock = await open_mesh_socket(peer.mesh_ip, port, source)
            backend = _Backend(peer, pinned, tokens, deadline, on_lost)
            made = backend
            conn = await asyncssh.run_client(
                sock,
                client_factory=lambda: made,
                **pinned_login_options(pinned, username, CLIENT_VERSION),
                encoding=None,
                **options,
            )
            sock = None  # owned by the connection now
            return conn
    except TimeoutError:
        raise client_errors.connection_timeout(peer.name, peer.mesh_ip, port, timeout) from None
    except ConnectionRefusedError:
        raise client_errors.not_detected(
            peer.name, f"connection refused on {peer.mesh_ip} port {port}"
        ) from None
    except asyncssh.HostKeyNotVerifiable:
        raise _key_error(peer, backend) from None
    except asyncssh.PermissionDenied:
        # a per-peer token carries the IdP token's iat: too old or expired means the cached
        # IdP token is, too
        if backend is not None and backend.refusal in _STALE and backend.last_cached:
            await _forget(tokens)
        raise _auth_error(peer, username, backend) from None
    except (asyncssh.DisconnectError, OSError) as e:
        if backend is not None and _closed_before_ssh(backend):
            raise client_errors.source_refused(peer.name, peer.mesh_ip, port, source) from None
        if isinstance(e, asyncssh.DisconnectError):
            raise client_errors.auth_failed(
                peer.name, f"the server closed the connection: {e.reason}"
            ) from None
        raise ClientError(
            "Connection failed",
            f"{peer.name} ({peer.mesh_ip} port {port}) from {source}: {e.strerror or e}",
            "that `meshssh up` is running and owns the mesh address "
            f"{source}, and that the peer is online (meshssh status).",
        ) from None
    finally:
        if sock is not None:
            sock.close()


def _closed_before_ssh(backend: _Backend) -> bool:
    """TCP was up, but the peer closed it before sending its SSH banner (its gate refused)."""
    conn = backend.conn
    return conn is not None and not conn.get_extra_info("server_version")


async def _forget(tokens: TokenSource) -> None:
    """Drop the cached token the server called expired (best effort, bounded)."""
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        async with asyncio.timeout(2.0):
            await tokens.forget_token()


def _key_error(peer: PeerEntry, backend: _Backend | None) -> ClientError:
    from meshssh_common.host_keys import fingerprint  # only on this path: keeps startup lean

    presented = backend.presented if backend else None
    shown = fingerprint(presented.export_public_key().decode()) if presented else "no key"
    return client_errors.host_key_mismatch(peer.name, shown, fingerprint(peer.host_key_line))


def _auth_error(peer: PeerEntry, username: str, backend: _Backend | None) -> ClientError:
    if backend is None or backend.banner is None:
        return client_errors.permission_denied_publickey(username, peer.name)
    if backend.token_error is not None:
        return client_errors.auth_failed(peer.name, f"no login token: {backend.token_error}")
    if backend.banner is not BannerKind.MESHSSH_JWT:
        return client_errors.permission_denied_publickey(username, peer.name)
    if backend.refusal is not None:
        return client_errors.refused(username, peer.name, backend.refusal)
    if backend.sent_idp:
        return client_errors.permission_denied(
            username,
            peer.name,
            "the server refused your IdP token (no agent here to exchange it for a per-peer "
            "token; only a server run with --accept-idp-tokens accepts the IdP token)",
        )
    return client_errors.permission_denied(
        username, peer.name, "the server refused your per-peer login token"
    )
