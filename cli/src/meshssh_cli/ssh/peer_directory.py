"""What the SSH client needs from the local peer agent: the user's token and the peer map.

``meshssh ssh``, ``meshssh ssh proxy`` and ``meshssh ssh detect`` depend only on the two narrow
protocols here (the test seam, after tailssh's interface to its host agent):

- :class:`TokenSource` gives the caller's JWT from the agent's per-user cache, or runs one
  device flow that every parallel caller shares (the agent does the single-flight);
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
    """A JWT for the SSH password; ``cached`` says whether it came from the agent's cache."""

    value: str
    cached: bool


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
