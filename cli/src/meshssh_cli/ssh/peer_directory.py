"""What the SSH client needs from the local peer agent: the user's token and the peer map.

``meshssh ssh``, ``meshssh ssh proxy`` and ``meshssh ssh detect`` depend only on the two narrow
protocols here (the test seam, after tailssh's interface to its host agent):

- :class:`TokenSource` gives, for each connection, a per-peer token for the target (the agent
  exchanges the user's IdP token at authn, SPEC §6), and the caller's IdP token itself from
  the agent's per-user cache, or from one device flow that every parallel caller shares (the
  agent does the single-flight) where no exchange is possible;
- :class:`PeerDirectory` resolves a host name or mesh address from the current network map to
  its mesh address and the SSH host key the management plane pinned for it, and knows this
  peer's own mesh address (the client binds it as its source address).

The real implementation talks to the agent over its Unix socket in ``--state-dir``
(:mod:`meshssh_cli.link.opener`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from meshssh_agent.peers import PeerEntry

    pass

__all__ = [
    "ClientLink",
    "IssuedToken",
    "LinkOpener",
    "PeerDirectory",
    "TokenSource",
]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A JWT for the SSH password; ``cached`` says whether it came from the agent's cache.

    ``per_peer`` says it is a per-peer token (audience: one peer, one use) rather than the
    user's IdP token.
    """

    value: str
    cached: bool
    per_peer: bool = False


class TokenSource(Protocol):
    """Gives the calling OS user's JWT (SPEC §9: cached per user, one shared device flow)."""

    async def get_token(self, *, force_new: bool = False) -> IssuedToken:
        """The cached token, or a fresh one from a device flow (always fresh if ``force_new``).

        Raises:
            OSError, TimeoutError, RuntimeError: the agent is unreachable or the flow failed.
        """
        ...

    async def forget_token(self) -> None:
        """Drop the cached token (a server said it expired): the next call signs in afresh.

        Raises:
            OSError, TimeoutError, RuntimeError: the agent is unreachable or refused.
        """
        ...

    async def peer_token(self, peer: PeerEntry) -> IssuedToken | None:
        """A fresh per-peer token for one connection to ``peer`` (never cached, never reused).

        Returns:
            None when this source has no agent to exchange through: the caller then sends the
            IdP token from :meth:`get_token`, which only servers run with
            ``--accept-idp-tokens`` accept.

        Raises:
            RuntimeError: the exchange failed, or the map names no peer id for ``peer``
                (fail closed: no token is sent to a peer of unknown identity).
            OSError, TimeoutError: the agent is unreachable.
        """
        ...


class PeerDirectory(Protocol):
    """The current network map's remote peers and this peer's own mesh address."""

    async def lookup(self, host: str) -> PeerEntry | None:
        """The peer whose name (any case, with or without a trailing dot) or address is ``host``."""
        ...

    async def local_mesh_ip(self) -> str:
        """This peer's mesh address, the source address of every client connection."""
        ...

    async def peers(self) -> Sequence[PeerEntry]:
        """Every remote peer in the current map (for the OpenSSH drop-in)."""
        ...


class ClientLink(TokenSource, PeerDirectory, Protocol):
    """Both halves, as one connection to the agent provides them."""

    async def aclose(self) -> None:
        """Release the connection to the agent."""
        ...


class LinkOpener(Protocol):
    """Opens the link for a state dir (``None``: the default one)."""

    async def __call__(self, state_dir: Path | None) -> ClientLink:
        """Connect to the agent serving ``state_dir``.

        Raises:
            LinkError: no agent serves that state dir.
        """
        ...
