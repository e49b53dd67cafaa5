"""Registering the peer with the management plane (``meshssh.policy.v1.req.register``).

The first time, the peer logs in with ``--setup-key``; the reply's peer id and credential are
stored (0600) and used for every later login, so a restart needs no setup key. If the stored
credential is refused (the peer was removed) and a setup key was given, the peer registers
afresh. While the management plane does not answer, registration is retried with backoff;
a refusal is final.

Example::

    reply = await register(nc, config, host_key.public_line, log=log, progress=print)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.client import Client as NATS

from meshssh_agent.settings import AgentConfig
from meshssh_agent.state_dir import PeerCredential, load_credential, save_credential
from meshssh_common import subjects
from meshssh_common.errors import ConfigError, Denied, NotFound, Unavailable
from meshssh_common.logs import BoundLogger
from meshssh_common.rpc import request
from meshssh_common.wire import RegisterReply, RegisterRequest

__all__ = ["register"]

_BACKOFF_MAX = 5.0


def _request(config: AgentConfig, host_key: str, cred: PeerCredential | None) -> RegisterRequest:
    return RegisterRequest(
        name=config.name,
        mesh_ip=config.mesh_ip,
        meta=config.meta(),
        ssh_host_key=host_key,
        setup_key="" if cred is not None else config.setup_key,
        peer_id=cred.peer_id if cred is not None else "",
        credential=cred.credential if cred is not None else "",
    )


async def register(
    nc: NATS,
    config: AgentConfig,
    host_key: str,
    *,
    log: BoundLogger,
    progress: Callable[[str], None],
    timeout: float = 5.0,
) -> RegisterReply:
    """Log in and return the reply (the stored credential is updated).

    Args:
        nc: a connected NATS client.
        config: the agent's settings (name, mesh address, flags, setup key, state dir).
        host_key: the peer's SSH host public key line.
        log: the agent's logger.
        progress: told the last problem while retrying (shown by ``meshssh status``).
        timeout: seconds per attempt.

    Raises:
        ConfigError: no stored credential and no setup key.
        Denied: the management plane refused the setup key.
        MeshError: any other refusal.
    """
    cred = load_credential(config.credential_path)
    if cred is None and not config.setup_key:
        raise ConfigError("--setup-key", "required the first time this peer registers")
    delay = 0.2
    while True:
        req = _request(config, host_key, cred)
        try:
            reply = await request(nc, subjects.POLICY_REGISTER, req, RegisterReply, timeout=timeout)
        except Unavailable as e:
            progress(f"management plane not answering ({e}); retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
            continue
        except (Denied, NotFound) as e:
            if cred is not None and config.setup_key:
                log.warning(
                    "stored peer credential refused; registering with the setup key",
                    extra={"peer_id": cred.peer_id, "error": str(e)},
                )
                cred = None
                continue
            raise
        save_credential(
            config.credential_path,
            PeerCredential(
                peer_id=reply.peer_id,
                credential=reply.credential,
                management_url=config.management_url,
            ),
        )
        log.info("registered", extra={"peer_id": reply.peer_id, "serial": reply.netmap.serial})
        return reply
