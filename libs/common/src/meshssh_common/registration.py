"""Registering a peer with the management plane over REST (SPEC §5, BUS design).

Every process that is a peer of its own registers this way: the agent, the browser gateway.
``POST <--management-url>/api/v1/peers/register`` with a msgspec-JSON
:class:`~meshssh_common.wire.RegisterRequest`; the answer is a
:class:`~meshssh_common.wire.RegisterReply`. An unregistered peer has no NATS identity, so this
happens before the peer connects to NATS. The request carries the peer's NATS public key
(``nats_key``; the seed stays in the state dir) and the reply a user JWT for it, which
:class:`~meshssh_common.bus_identity.BusIdentity` writes as ``nats.creds``.

The first time, the peer logs in with its setup key (``MESHSSH_SETUP_KEY`` or
``--setup-key-file``); the reply's peer id and credential are stored (0600,
:mod:`meshssh_common.peer_credential`) and used for every later login and for every renewal
of the JWT, so a restart needs no setup key. If the stored credential is refused (the peer was
removed) and a setup key was given, the peer registers afresh with a new NATS key pair (the old
one was revoked). While the management plane does not answer (no connection, a timeout, 5xx or
429), the call is retried with backoff; any other refusal is final.

Example::

    login = PeerLogin(management_url=url, name="gw-1", mesh_ip="100.64.0.9", meta=meta,
                      host_key=host_key.public_line, credential_path=state / "peer.json")
    async with httpx.AsyncClient() as http:
        reply = await register(http, login, setup_key, identity=identity, log=log,
                               progress=print)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from meshssh_common import codec
from meshssh_common.bus_identity import BusIdentity
from meshssh_common.errors import (
    ConfigError,
    Denied,
    MeshError,
    NotFound,
    RateLimited,
    RemoteError,
    Unavailable,
    error_for_code,
)
from meshssh_common.logs import BoundLogger
from meshssh_common.peer_credential import PeerCredential, load_credential, save_credential
from meshssh_common.wire import PeerMeta, RegisterReply, RegisterRequest

__all__ = [
    "REGISTER_PATH",
    "SETUP_KEY_ENV",
    "PeerLogin",
    "post_register",
    "register",
    "take_setup_key",
]

_BACKOFF_MAX = 5.0
SETUP_KEY_ENV = "MESHSSH_SETUP_KEY"
REGISTER_PATH = "/api/v1/peers/register"


def take_setup_key(path: Path | None, env: MutableMapping[str, str] = os.environ) -> str:
    """The setup key from ``path`` (``--setup-key-file``) or ``MESHSSH_SETUP_KEY`` ("": none).

    The variable is removed from ``env``, so no child process inherits the key.

    Raises:
        ConfigError: the file cannot be read, or is empty.
    """
    key = env.pop(SETUP_KEY_ENV, "").strip()
    if path is None:
        return key
    try:
        key = path.read_text().strip()
    except OSError as e:
        raise ConfigError("--setup-key-file", f"cannot read {path}: {e.strerror}") from e
    if not key:
        raise ConfigError("--setup-key-file", f"{path} is empty")
    return key


@dataclass(frozen=True, slots=True)
class PeerLogin:
    """Who registers, and where: what every registration call of one peer sends.

    A peer whose flags change builds a new one (its ``meta`` says them) for the next call.
    """

    management_url: str  # --management-url ("": the call is refused as a bad setting)
    name: str
    mesh_ip: str
    meta: PeerMeta
    host_key: str  # the SSH host public key line
    credential_path: Path  # where the peer credential is kept (peer.json)


def _request(
    login: PeerLogin, setup_key: str, cred: PeerCredential | None, nats_key: str
) -> RegisterRequest:
    return RegisterRequest(
        name=login.name,
        mesh_ip=login.mesh_ip,
        meta=login.meta,
        ssh_host_key=login.host_key,
        setup_key="" if cred is not None else setup_key,
        peer_id=cred.peer_id if cred is not None else "",
        credential=cred.credential if cred is not None else "",
        nats_key=nats_key,
    )


def _refusal(reply: httpx.Response) -> MeshError:
    """The error of a non-2xx answer (policy's ``{"error", "code"}`` body when there is one)."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body.get("code")
        if isinstance(code, str) and code:
            return error_for_code(code, body["error"])
        return RemoteError(f"http_{reply.status_code}", body["error"])
    return RemoteError(f"http_{reply.status_code}", reply.text[:200].strip() or reply.reason_phrase)


async def post_register(
    http: httpx.AsyncClient, url: str, req: RegisterRequest, *, timeout: float
) -> RegisterReply:
    """One registration call.

    Raises:
        Unavailable: no answer, a timeout, 5xx or 429 (worth retrying).
        WireError: a 2xx answer that is not a ``RegisterReply``.
        MeshError: the refusal management sent (``Denied``, ``NotFound``, ``BadRequest``...).
    """
    try:
        reply = await http.post(
            url,
            content=codec.encode(req),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )
    except httpx.HTTPError as e:
        raise Unavailable(f"POST {url}: {type(e).__name__}: {e}") from e
    if reply.status_code >= 500 or reply.status_code == 429:
        raise Unavailable(f"POST {url}: {reply.status_code} {_refusal(reply)}")
    if not reply.is_success:
        raise _refusal(reply)
    return codec.decode(reply.content, RegisterReply)


async def register(
    http: httpx.AsyncClient,
    login: PeerLogin,
    setup_key: str,
    *,
    identity: BusIdentity,
    log: BoundLogger,
    progress: Callable[[str], None],
    timeout: float = 5.0,
    deadline: float | None = None,
) -> RegisterReply:
    """Log in and return the reply (the stored credential is updated).

    Args:
        http: the client the peer keeps for management.
        login: who registers (name, mesh address, metadata, host key) and where.
        setup_key: the one-time setup key ("": none; a renewal passes none).
        identity: the peer's NATS key pair (its public key is sent).
        log: the peer's logger.
        progress: told the last problem while retrying (``meshssh status`` shows it).
        timeout: seconds per attempt.
        deadline: give up retrying at this ``time.time()`` (None: never).

    Raises:
        ConfigError: no ``--management-url``, or no stored credential and no setup key.
        Unavailable: management did not answer before ``deadline``.
        MeshError: the refusal (``Denied``: setup key or credential refused).
    """
    if not login.management_url:
        raise ConfigError("--management-url / MESHSSH_MANAGEMENT_URL", "required to register")
    url = login.management_url.rstrip("/") + REGISTER_PATH
    path = login.credential_path
    cred = load_credential(path)
    if cred is None and not setup_key:
        raise ConfigError(
            "--setup-key-file / MESHSSH_SETUP_KEY", "required the first time this peer registers"
        )
    delay = 0.2
    while True:
        req = _request(login, setup_key, cred, identity.key.public)
        try:
            reply = await post_register(http, url, req, timeout=timeout)
        except (Unavailable, RateLimited) as e:
            if deadline is not None and time.time() + delay >= deadline:
                raise Unavailable(f"management plane not answering: {e}") from e
            progress(f"management plane not answering ({e}); retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
            continue
        except (Denied, NotFound) as e:
            if cred is not None and setup_key:
                log.warning(
                    "stored peer credential refused; registering with the setup key",
                    extra={"peer_id": cred.peer_id, "error": str(e)},
                )
                cred = None
                identity.replace()  # management revoked the old key with the old peer
                continue
            raise
        save_credential(
            path,
            PeerCredential(
                peer_id=reply.peer_id,
                credential=reply.credential,
                management_url=login.management_url,
            ),
        )
        log.info(
            "registered",
            extra={
                "peer_id": reply.peer_id,
                "serial": reply.netmap.serial,
                "nats_expires_at": reply.nats_expires_at,
            },
        )
        return reply
