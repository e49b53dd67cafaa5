"""Registering the peer with the management plane (``meshssh.policy.v1.req.register``).

The first time, the peer logs in with its setup key (``MESHSSH_SETUP_KEY`` or
``--setup-key-file``); the reply's peer id and credential are
stored (0600) and used for every later login, so a restart needs no setup key. If the stored
credential is refused (the peer was removed) and a setup key was given, the peer registers
afresh. While the management plane does not answer, registration is retried with backoff;
a refusal is final.

Example::

    reply = await register(nc, settings, setup_key, host_key.public_line, log=log, progress=print)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, MutableMapping
from pathlib import Path

from nats.aio.client import Client as NATS

from meshssh_agent.settings import AgentSettings
from meshssh_agent.state_dir import PeerCredential, load_credential, save_credential
from meshssh_common import subjects
from meshssh_common.errors import ConfigError, Denied, NotFound, Unavailable
from meshssh_common.logs import BoundLogger
from meshssh_common.rpc import request
from meshssh_common.wire import RegisterReply, RegisterRequest

__all__ = ["SETUP_KEY_ENV", "register", "take_setup_key"]

_BACKOFF_MAX = 5.0
SETUP_KEY_ENV = "MESHSSH_SETUP_KEY"


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


def _request(
    settings: AgentSettings, setup_key: str, host_key: str, cred: PeerCredential | None
) -> RegisterRequest:
    return RegisterRequest(
        name=settings.name,
        mesh_ip=settings.mesh_ip,
        meta=settings.meta(),
        ssh_host_key=host_key,
        setup_key="" if cred is not None else setup_key,
        peer_id=cred.peer_id if cred is not None else "",
        credential=cred.credential if cred is not None else "",
    )


async def register(
    nc: NATS,
    settings: AgentSettings,
    setup_key: str,
    host_key: str,
    *,
    log: BoundLogger,
    progress: Callable[[str], None],
    timeout: float = 5.0,
) -> RegisterReply:
    """Log in and return the reply (the stored credential is updated).

    Args:
        nc: a connected NATS client.
        settings: the agent's settings (name, mesh address, flags, state dir).
        setup_key: the one-time setup key ("" when none was given).
        host_key: the peer's SSH host public key line.
        log: the agent's logger.
        progress: told the last problem while retrying (shown by ``meshssh status``).
        timeout: seconds per attempt.

    Raises:
        ConfigError: no stored credential and no setup key.
        Denied: the management plane refused the setup key.
        MeshError: any other refusal.
    """
    path = settings.files.credential
    cred = load_credential(path)
    if cred is None and not setup_key:
        raise ConfigError(
            "--setup-key-file / MESHSSH_SETUP_KEY", "required the first time this peer registers"
        )
    delay = 0.2
    while True:
        req = _request(settings, setup_key, host_key, cred)
        try:
            reply = await request(nc, subjects.POLICY_REGISTER, req, RegisterReply, timeout=timeout)
        except Unavailable as e:
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
                continue
            raise
        save_credential(
            path,
            PeerCredential(
                peer_id=reply.peer_id,
                credential=reply.credential,
                management_url=settings.management_url,
            ),
        )
        log.info("registered", extra={"peer_id": reply.peer_id, "serial": reply.netmap.serial})
        return reply
