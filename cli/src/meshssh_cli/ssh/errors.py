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
    "refused",
    "sftp_unavailable",
    "source_refused",
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


_LOGIN_AGAIN = "your login: run `meshssh login` to get a fresh token, then connect again."
_CLOCKS = "the clocks of this machine, the peer and the identity provider (NTP)."
_KEYS = (
    "your login (run `meshssh login` again); if it persists, ask an admin to check the "
    "identity provider's signing keys and {host}'s map (meshctl peers show {host})."
)
_NOT_READY = (
    "again in a minute; if it persists, ask an admin to check {host} (meshctl peers show {host})."
)
# reason -> (what the server refused, what to check); {user} and {host} are filled in.
_REFUSALS: dict[str, tuple[str, str]] = {
    "expired": ("your login token has expired", _LOGIN_AGAIN),
    "too_old": ("your login token is older than {host} accepts (max token age)", _LOGIN_AGAIN),
    "not_yet_valid": ("your login token is not valid yet", _CLOCKS),
    "issued_in_future": ("your login token was issued in the future", _CLOCKS),
    "bad_issuer": (
        "your login token comes from an identity provider {host} does not trust (issuer)",
        "that you signed in with the identity provider of this mesh (meshssh login), and ask "
        "an admin to check the issuer meshssh-authn publishes (--issuer).",
    ),
    "bad_audience": (
        "your login token is not meant for {host} (audience)",
        "the audience of your identity provider's tokens against meshssh-authn's --audience "
        "(ask an admin), then sign in again (meshssh login).",
    ),
    "not_authorized": (
        "you are not authorized to log in as {user} on {host}",
        "that a policy authorizes your identity as local user {user!r} on {host} (the "
        "authorized groups of its SSH rule: meshctl policies ls), or log in as another user.",
    ),
    "missing_claim": (
        "your login token lacks the user-id claim {host} uses",
        "the user-id claim setting (meshssh-authn --user-id-claim) with an admin.",
    ),
    "root_disabled": (
        "login as root is disabled on {host}",
        "that the peer runs with --enable-ssh-root if root logins are intended.",
    ),
    "unknown_user": (
        "there is no local user {user} on {host}",
        "the user name (-l USER or USER@HOST).",
    ),
    "bad_user": ("{user!r} is not a valid user name", "the user name (-l USER or USER@HOST)."),
    "rate_limited": (
        "too many failed logins from this peer",
        "again in a minute; the peer refuses a source after repeated failures.",
    ),
    "unknown_kid": ("{host} does not know the key that signed your login token", _KEYS),
    "bad_signature": ("{host} could not verify your login token's signature", _KEYS),
    "bad_alg": ("your login token uses a signing algorithm {host} refuses", _KEYS),
    "malformed": ("{host} could not read your login token", _LOGIN_AGAIN),
    "too_large": ("your login token is too large for {host}", _LOGIN_AGAIN),
    "no_map": ("{host} has no access policy yet", _NOT_READY),
    "no_jwt_config": ("{host} has no identity-provider configuration", _NOT_READY),
    "no_keys": ("{host} has no signing keys yet", _NOT_READY),
    # per-peer tokens (SPEC §6): one audience, one use, and no IdP token unless allowed
    "wrong_audience": (
        "your per-peer token was made for another peer, not {host} (audience)",
        "that the map's peer id for {host} is current (meshssh status -d), then connect "
        "again: each connection gets a token for its own target.",
    ),
    "replayed": (
        "your per-peer token was already used once ({host} refuses a token it has seen)",
        "nothing on your side if this was a retry: connect again for a fresh token; if you "
        "did not reuse it, someone else did (tell an admin).",
    ),
    "idp_token_refused": (
        "{host} accepts only per-peer tokens, and was sent the identity provider's token",
        "that `meshssh up` runs here (its agent exchanges your login for a per-peer token "
        "at meshssh-authn); only a peer run with --accept-idp-tokens takes the IdP token.",
    ),
}


def refused(user: str, host: str, reason: str) -> ClientError:
    """The server refused the login and said why (``MeshSSH-Refusal: <reason>``).

    ``reason`` is the server's bounded label; an unknown one is shown as it is.
    """
    what, check = _REFUSALS.get(
        reason,
        ("the server refused your login", "your login (meshssh login) and the peer's policy."),
    )
    fill = {"user": user, "host": host}
    return ClientError(
        "Permission denied",
        f"{user}@{host}: {what.format(**fill)} (server reason: {reason})",
        check.format(**fill),
    )


def source_refused(host: str, addr: str, port: int, source: str) -> ClientError:
    """The peer closed the connection before SSH started: the gate refused this source."""
    return ClientError(
        "Permission denied",
        f"{host} ({addr} port {port}) closed the connection before SSH started: it does not "
        f"accept connections from this peer ({source}) now (source not allowed)",
        f"that a policy allows TCP port {port} from this peer to {host} (meshctl policies ls), "
        f"that SSH is enabled for {host} (meshssh status -d), and wait a minute if you had "
        "failed logins there (the peer then refuses your address for a while).",
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
