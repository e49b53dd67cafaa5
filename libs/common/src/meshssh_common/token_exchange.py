"""Per-peer tokens: a peer trades its user's IdP token at authn for one connection (SPEC §6).

Two callers: the agent socket's ``token-exchange`` op (it first gets the caller's IdP token as
``token-get`` with ``login`` does: the cache of SPEC §9, one shared device flow), and the
browser gateway (the IdP token its ticket carried). Both call :func:`exchange_token`: one
:class:`~meshssh_common.wire.authn.TokenExchangeRequest` on
``meshssh.authn.v1.req.token-exchange.<this peer's id>`` (the bus lets a peer publish only its
own), answered by authn with a token whose ``aud`` names the target peer, ``exp`` at most
120 s ahead and a fresh ``jti``. That token is handed to the caller and never kept: every
connection gets its own, and a server that reads one cannot use it anywhere else.

Every failure is a :class:`~meshssh_common.errors.MeshError` whose ``public`` text says what
to do (the agent's socket shows it to the caller as an ``ErrorReply``):

- no authn answered within the timeout → :class:`Unavailable`;
- authn refused the IdP token → :class:`Denied` (the cached token is then dropped, so the
  next connection signs in afresh);
- the target is not a peer id, or any other refusal → the error authn sent, with its code.

Example::

    reply = await exchange_token(nc, "laptop-1", idp_token, "server-7", timeout=5.0)
    password = reply.access_token
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.errors import (
    BadRequest,
    Denied,
    RateLimited,
    RemoteError,
    Unavailable,
    WireError,
)
from meshssh_common.rpc import request
from meshssh_common.wire.authn import TokenExchangeReply, TokenExchangeRequest

__all__ = ["EXCHANGE_TIMEOUT", "exchange_token"]

EXCHANGE_TIMEOUT = 5.0  # authn answers in milliseconds; past this it is down or overloaded


async def exchange_token(
    nc: NATS | None,
    own_peer: str,
    idp_token: str,
    target_peer: str,
    *,
    timeout: float = EXCHANGE_TIMEOUT,
) -> TokenExchangeReply:
    """Exchange ``idp_token`` at authn for a per-peer token naming ``target_peer``.

    Args:
        nc: the peer's bus connection (None before it joined the bus).
        own_peer: this peer's id (the subject's last token; the bus checks it).
        idp_token: the user's IdP token (the agent's cache, a fresh login, a ticket).
        target_peer: the peer the connection goes to.
        timeout: seconds to wait for authn.

    Raises:
        Unavailable: the peer is not on the bus, or no authn answered in time.
        Denied: authn refused the IdP token (expired, wrong issuer or audience, ...).
        RateLimited: this peer asked too often.
        BadRequest: authn did not accept the request (an invalid target).
        WireError: authn's answer did not decode.
        RemoteError: any other error authn sent (its code kept).
    """
    if nc is None or not own_peer or not nc.is_connected:
        raise Unavailable(
            "the agent is not connected to the bus yet: cannot exchange the login token "
            "(see meshssh status)"
        )
    subject = subjects.token_exchange(own_peer)
    ask = TokenExchangeRequest(subject_token=idp_token, target_peer=target_peer)
    try:
        reply = await request(nc, subject, ask, TokenExchangeReply, timeout=timeout)
    except Unavailable as e:
        raise Unavailable(
            f"no authn answered the token exchange ({e}; the wait is {timeout:g} s); "
            "is meshssh-authn running?"
        ) from e
    except Denied as e:
        raise Denied(
            f"authn refused the login token: {e.reason}",
            public=f"authn refused your login token ({e.public}); sign in again (meshssh login)",
        ) from e
    except RateLimited as e:
        raise RateLimited(f"authn: too many token exchanges from this peer ({e})") from e
    except RemoteError as e:
        if e.remote_code in ("429", RateLimited.code):
            raise RateLimited(f"authn: too many token exchanges from this peer ({e})") from e
        raise
    except BadRequest as e:
        raise BadRequest(f"authn refused the exchange for peer {target_peer!r}: {e}") from e
    if not reply.access_token:
        raise WireError(f"{subject}: authn answered without a token")
    return reply
