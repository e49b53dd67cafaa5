"""Logging in to a target peer's sshd for one browser terminal (issue 20, DESIGN step 3).

As ``meshssh ssh`` dials (``meshssh_cli.ssh.conn``), over the mesh and with nothing of the
gateway's own towards sshd:

1. TCP from the gateway's mesh address (bound, so the target's gate and audit see the
   gateway as the source) to the target's mesh address and sshd port, as the gateway's own
   signed map gives them;
2. key exchange accepting exactly the host key the map pins (no trust on first use): another
   key fails before any credential is sent;
3. password authentication with the user's per-peer token (``aud`` = this target only), once;
   a refusal is final, and the text sshd sent with it (its auth banner, less the
   ``MeshSSH-Refusal:`` line) is what the browser is shown.

Failures: :class:`HostKeyMismatch` (the map and the server disagree),
:class:`~meshssh_common.errors.Denied` (sshd refused the login; ``public`` is sshd's text),
:class:`~meshssh_common.errors.Unavailable` (no TCP, closed before SSH, timeout).

Example::

    conn, watch = await dial_target(remote, "alice", token, source="100.64.0.9", timeout=15)
    ...
    watch.reason   # "access revoked" once sshd disconnected with that reason
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import asyncssh

from meshssh_common.errors import Denied, Unavailable
from meshssh_common.host_keys import fingerprint
from meshssh_common.mesh_login import open_mesh_socket, pinned_login_options
from meshssh_common.refusal_banner import REFUSAL_MARKER, parse_refusal
from meshssh_common.wire import RemotePeer

__all__ = ["CLIENT_VERSION", "ConnectionWatch", "HostKeyMismatch", "dial_target"]

CLIENT_VERSION = "MeshSSH-Gateway-0.1.0"
WINDOW = 256 * 1024  # what sshd may send ahead of the gateway's reads (bounds memory)


class HostKeyMismatch(Denied):
    """The target presented another host key than the map pins."""

    def __init__(self, peer: RemotePeer, presented: str) -> None:
        pinned = fingerprint(peer.ssh_host_key)
        super().__init__(
            f"host key of {peer.name} is {presented}, the map pins {pinned}",
            public=f"the host key of {peer.name} does not match the one the management plane "
            "pins; not connecting",
        )


@dataclass(eq=False)
class ConnectionWatch(asyncssh.SSHClient):
    """Client-side hooks of one dial; remembers what the browser must be told.

    ``validate_host_public_key`` runs during key exchange, ``password_auth_requested`` after
    ``none`` failed, ``auth_banner_received`` when sshd explains a refusal,
    ``connection_lost`` when the connection ends (sshd's disconnect reason, e.g.
    "access revoked", is kept in :attr:`reason`).
    """

    pinned: asyncssh.SSHKey
    token: str
    tries: int = 0  # password_auth_requested
    presented: asyncssh.SSHKey | None = None  # validate_host_public_key
    banner: str = ""  # auth_banner_received: sshd's text for people
    refusal: str | None = None  # auth_banner_received: sshd's reason label
    reason: str = ""  # connection_lost: the disconnect reason ("" when none)
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # connection_lost
    got_banner: bool = False  # auth_banner_received or any auth request: SSH started

    def auth_banner_received(self, msg: str, lang: str) -> None:
        """Keep sshd's text and reason label of a refusal."""
        self.got_banner = True
        reason = parse_refusal(msg)
        if reason is not None:
            self.refusal = reason
        text = "\n".join(
            line for line in msg.splitlines() if line.strip() and REFUSAL_MARKER not in line
        )
        self.banner = text.strip()[:500]

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        """Accept exactly the pinned key."""
        self.presented = key
        return key.public_data == self.pinned.public_data

    def password_auth_requested(self) -> str | None:
        """The per-peer token, once."""
        self.got_banner = True
        if self.tries or self.refusal is not None:
            return None  # a refused token is final; a refusal before any token stands
        self.tries += 1
        return self.token

    def connection_lost(self, exc: Exception | None) -> None:
        """Keep sshd's disconnect reason."""
        if isinstance(exc, asyncssh.DisconnectError):
            self.reason = exc.reason
        self.lost.set()


async def dial_target(
    peer: RemotePeer,
    port: int,
    username: str,
    token: str,
    *,
    source: str,
    timeout: float,
) -> tuple[asyncssh.SSHClientConnection, ConnectionWatch]:
    """Connect and log in to ``peer``'s sshd as ``username`` with the per-peer ``token``.

    Args:
        peer: the target as the gateway's map has it (address, pinned host key).
        port: the target's sshd port.
        username: the local user on the target.
        token: the per-peer token naming this target.
        source: the gateway's mesh address (bound as the source).
        timeout: for TCP, key exchange and authentication together.

    Returns:
        The connection, and its watch (why it ends).

    Raises:
        HostKeyMismatch: the server's key is not the pinned one.
        Denied: sshd refused the login (``public``: sshd's text).
        Unavailable: no connection, or it closed before SSH, or the timeout passed.
    """
    try:
        pinned = asyncssh.import_public_key(peer.ssh_host_key)
    except (asyncssh.KeyImportError, ValueError):
        raise Denied(
            f"{peer.name} has no usable pinned host key",
            public=f"{peer.name} has no SSH host key in the gateway's map; not connecting",
        ) from None
    watch = ConnectionWatch(pinned, token)
    sock: socket.socket | None = None
    where = f"{peer.name} ({peer.mesh_ip} port {port})"
    try:
        async with asyncio.timeout(timeout):
            sock = await open_mesh_socket(peer.mesh_ip, port, source, nodelay=True)
            conn = await asyncssh.connect(
                sock=sock,
                client_factory=lambda: watch,
                **pinned_login_options(pinned, username, CLIENT_VERSION),
                window=WINDOW,
                keepalive_interval=30,
                keepalive_count_max=3,
            )
            sock = None  # the connection owns it now
            return conn, watch
    except TimeoutError:
        raise Unavailable(f"no SSH login to {where} within {timeout:g} s") from None
    except asyncssh.HostKeyNotVerifiable:
        shown = "no key"
        if watch.presented is not None:
            shown = fingerprint(watch.presented.export_public_key().decode())
        raise HostKeyMismatch(peer, shown) from None
    except asyncssh.PermissionDenied:
        reason = watch.refusal or "refused"
        public = watch.banner or f"{peer.name} refused the login as {username}"
        raise Denied(f"sshd of {where} refused {username}: {reason}", public=public) from None
    except (asyncssh.Error, OSError) as e:
        if isinstance(e, OSError) or not watch.got_banner:
            raise Unavailable(
                f"cannot reach {where} from {source}: {e}",
            ) from None
        raise Denied(f"sshd of {where}: {e}", public=f"{peer.name}: {e}") from None
    finally:
        if sock is not None:
            sock.close()
