"""The client's user-facing failures: the texts users search for (SPEC §9), each with a next step.

Every failure of ``meshssh ssh`` and ``meshssh ssh proxy`` that a user can act on is a
:class:`ClientError` built by one of the functions below, so the wording lives in one place.
Its first words are the searched text (``Permission denied``, ``Connection timeout``, ...);
then the detail (host, port, user, what the server said); then what to check next.

Example::

    raise sftp_unavailable("demo-server")
    # SFTP subsystem not available on demo-server: the peer refused the sftp subsystem.
    #   Check that the peer runs with --enable-ssh-sftp.
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "LinkError",
    "auth_failed",
    "cannot_bind",
    "connection_timeout",
    "host_key_mismatch",
    "no_host_key",
    "not_detected",
    "permission_denied",
    "permission_denied_publickey",
    "port_forwarding_unavailable",
    "sftp_unavailable",
]

EXIT_SSH_FAILURE = 255  # what OpenSSH's ssh exits with when it cannot connect


class ClientError(Exception):
    """A failure shown to the user as ``<headline>: <detail>`` and a ``Check ...`` line."""

    exit_code = EXIT_SSH_FAILURE

    def __init__(self, headline: str, detail: str, check: str) -> None:
        super().__init__(f"{headline}: {detail}")
        self.headline = headline
        self.detail = detail
        self.check = check

    def render(self) -> str:
        """The full text for stderr (two lines, no trailing newline)."""
        return f"{self.headline}: {self.detail}\n  Check {self.check}"


class LinkError(ClientError):
    """The local agent could not be reached or could not answer."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "Authentication failed",
            detail,
            "that `meshssh up` is running for this --state-dir (meshssh status).",
        )


def not_detected(host: str, why: str) -> ClientError:
    """No MeshSSH server answered, or ``host`` is not a peer in the map."""
    return ClientError(
        "SSH server not detected",
        f"{host}: {why}",
        "the peer name (meshssh status), that the peer runs `meshssh up --allow-server-ssh`, "
        "and that SSH is enabled for it on the management plane.",
    )


def connection_timeout(host: str, addr: str, port: int, seconds: float) -> ClientError:
    """Nothing answered within the connect timeout."""
    return ClientError(
        "Connection timeout",
        f"no answer from {host} ({addr} port {port}) within {seconds:g} s",
        "that the peer is online (meshssh status) and that a policy allows TCP "
        f"port {port} from this peer to it.",
    )


def host_key_mismatch(host: str, presented: str, pinned: str) -> ClientError:
    """The server's host key is not the one the management plane distributed (no TOFU)."""
    return ClientError(
        "Host key verification failed",
        f"{host} presented {presented}, but the management plane pinned {pinned}; "
        "the connection was closed before any credential was sent",
        "whether the peer's host key was regenerated (meshssh status -d on both peers); "
        "until the map carries the new key, someone may be intercepting this connection.",
    )


def no_host_key(host: str) -> ClientError:
    """The map has no host key for the peer, so nothing can be verified."""
    return ClientError(
        "Host key verification failed",
        f"the network map carries no SSH host key for {host}",
        "that the peer has registered with `meshssh up` and that this peer's map is current "
        "(meshssh status -d).",
    )


def auth_failed(host: str, why: str) -> ClientError:
    """No token could be obtained, or the SSH handshake failed before authorization."""
    return ClientError(
        "Authentication failed",
        f"{host}: {why}",
        "your login (meshssh login) and that the agent is running (meshssh status).",
    )


def permission_denied(user: str, host: str, why: str) -> ClientError:
    """The server refused this identity as this local user, or refused the session."""
    return ClientError(
        "Permission denied",
        f"{user}@{host}: {why}",
        f"that a policy authorizes your identity as local user {user!r} on {host} "
        "(authorized groups of its SSH rule), that root logins are enabled on the peer if "
        "you asked for root (--enable-ssh-root), and that your login is fresh (meshssh login).",
    )


def permission_denied_publickey(user: str, host: str) -> ClientError:
    """The server offered no method meshssh can use (it wants keys, not a token)."""
    return ClientError(
        "Permission denied (publickey)",
        f"{user}@{host} accepts neither a meshssh login token nor machine identity",
        "that the host is a meshssh peer (meshssh ssh detect HOST 22) rather than a plain "
        "SSH server; for a plain server use ssh without the meshssh drop-in.",
    )


def port_forwarding_unavailable(host: str, target: str, why: str) -> ClientError:
    """The server refused a ``direct-tcpip`` (``-L``/``-D``) or forward request."""
    return ClientError(
        "Port forwarding not available",
        f"{host} refused forwarding to {target}: {why}",
        "that the peer runs with --enable-ssh-local-port-forwarding (for -L/-D) or "
        "--enable-ssh-remote-port-forwarding (for -R).",
    )


def cannot_bind(where: str, port: int, why: str) -> ClientError:
    """A listening port could not be opened (locally for ``-L``, on the peer for ``-R``)."""
    return ClientError(
        "Cannot bind to port",
        f"{port} on {where}: {why}",
        "that the port is free, that ports below 1024 are used only as root, and for -R that "
        "the peer runs with --enable-ssh-remote-port-forwarding.",
    )


def sftp_unavailable(host: str) -> ClientError:
    """The server refused the ``sftp`` subsystem (``scp`` and ``sftp`` need it)."""
    return ClientError(
        "SFTP subsystem not available",
        f"{host} refused the sftp subsystem",
        "that the peer runs with --enable-ssh-sftp (scp uses SFTP too; `scp -O` does not).",
    )
