"""Where ``meshssh ssh`` finds the local peer agent: the Unix socket in ``--state-dir``.

The agent (``meshssh up``) serves the caller's cached JWT (per OS user, one shared device
flow) and the current map's peers over this socket (``cli/AGENT.md``); :func:`open_agent` is
the :class:`~meshssh_cli.ssh.peer_directory.LinkOpener` the CLI uses.

- :meth:`AgentLink.get_token` asks for the cached token and, when there is none, for a login:
  the agent runs (or joins) the caller's device flow and sends the URL and code first, which
  go to stderr as ``URL: `` and ``Code: `` lines (SPEC §11); a browser opens unless
  ``MESHSSH_NO_BROWSER`` is set or there is no graphical session;
- :meth:`AgentLink.peer_token` asks the agent for a per-peer token for one connection
  (``token-exchange``: the same login when nothing is cached, then the exchange at authn);
- the peers (with their ids) and this peer's mesh address come from one detailed ``status``
  per link.

Example::

    link = await open_agent(Path("/var/lib/meshssh"))
    token = await link.get_token()
    peer = await link.lookup("demo-server")
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshssh_agent.peers import PeerEntry, find_peer
from meshssh_agent.state_dir import default_state_dir
from meshssh_cli.link.client import AgentClient
from meshssh_cli.ssh.errors import LinkError
from meshssh_cli.ssh.peer_directory import IssuedToken
from meshssh_common.errors import MeshError
from meshssh_common.wire.agent import SOCKET_NAME, AgentStatus, PromptReply

__all__ = [
    "LOGIN_TIMEOUT",
    "SOCKET_NAME",
    "AgentLink",
    "PromptPrinter",
    "agent_socket",
    "default_state_dir",
    "graphical",
    "open_agent",
]

LOGIN_TIMEOUT = 900.0  # a device flow waits for the user's browser; providers expire codes sooner


def agent_socket(state_dir: Path | None) -> Path:
    """The agent's socket for ``state_dir``."""
    return (state_dir or default_state_dir()) / SOCKET_NAME


def graphical() -> bool:
    """Whether a browser can be opened here (macOS, Windows, or an X11/Wayland session)."""
    if sys.platform == "darwin" or os.name == "nt":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class PromptPrinter:
    """Shows each distinct device-flow prompt once on stderr; opens a browser if allowed."""

    def __init__(self, *, open_browser: bool) -> None:
        self.open_browser = open_browser
        self.shown: list[str] = []

    def __call__(self, prompt: PromptReply) -> None:
        """Print the URL and code lines (and open the browser for the first one)."""
        if prompt.code in self.shown:
            return
        self.shown.append(prompt.code)
        sys.stderr.write(
            "To sign in, open this URL in a browser and enter the code:\n"
            f"URL: {prompt.url}\nCode: {prompt.code}\n"
        )
        sys.stderr.flush()
        if self.open_browser and len(self.shown) == 1:
            import webbrowser  # only here: every `ssh proxy` imports this module

            webbrowser.open(prompt.url_complete or prompt.url)


class AgentLink:
    """:class:`~meshssh_cli.ssh.peer_directory.ClientLink` over the agent's socket."""

    def __init__(self, state_dir: Path, *, open_browser: bool) -> None:
        self.state_dir = state_dir
        self.prompts = PromptPrinter(open_browser=open_browser)
        self._status: AgentStatus | None = None

    async def status(self) -> AgentStatus:
        """The agent's detailed status (fetched once per link).

        Raises:
            LinkError: the agent is not running or did not answer.
        """
        if self._status is None:
            try:
                async with AgentClient.connect(self.state_dir) as agent:
                    self._status = await agent.status(detail=True)
            except MeshError as e:
                raise LinkError(e.public) from e
        return self._status

    async def get_token(self, *, force_new: bool = False) -> IssuedToken:
        """The cached token, or one from the device flow the agent runs for this OS user.

        Raises:
            RuntimeError: the agent refused, failed or did not answer.
        """
        shown = len(self.prompts.shown)
        try:
            async with AgentClient.connect(self.state_dir) as agent:
                if force_new:
                    await agent.token_drop()
                reply = await agent.token_get(
                    login=True, on_prompt=self.prompts, timeout=LOGIN_TIMEOUT
                )
        except MeshError as e:
            raise RuntimeError(f"the agent could not sign you in: {e.public}") from e
        if not reply.token:
            raise RuntimeError("the agent returned no token")
        return IssuedToken(reply.token, cached=len(self.prompts.shown) == shown)

    async def peer_token(self, peer: PeerEntry) -> IssuedToken:
        """A per-peer token for one connection to ``peer``, exchanged by the agent at authn.

        Raises:
            RuntimeError: the map names no id for ``peer``, or the agent or authn refused,
                failed or did not answer.
        """
        if not peer.peer_id:
            raise RuntimeError(
                f"the network map names no peer id for {peer.name}: no per-peer token can be "
                "made for it, so none is sent (update the agent and the management plane)"
            )
        shown = len(self.prompts.shown)
        try:
            async with AgentClient.connect(self.state_dir) as agent:
                reply = await agent.token_exchange(
                    peer.peer_id, on_prompt=self.prompts, timeout=LOGIN_TIMEOUT
                )
        except MeshError as e:
            raise RuntimeError(f"no per-peer token for {peer.name}: {e.public}") from e
        if not reply.token:
            raise RuntimeError("the agent returned no per-peer token")
        return IssuedToken(reply.token, cached=len(self.prompts.shown) == shown, per_peer=True)

    async def forget_token(self) -> None:
        """Drop this OS user's cached token in the agent.

        Raises:
            RuntimeError: the agent refused or did not answer.
        """
        try:
            async with AgentClient.connect(self.state_dir) as agent:
                await agent.token_drop()
        except MeshError as e:
            raise RuntimeError(f"the agent did not drop the token: {e.public}") from e

    async def lookup(self, host: str) -> PeerEntry | None:
        """The remote peer ``host`` names, from the agent's current map."""
        return find_peer(await self.peers(), host)

    async def local_mesh_ip(self) -> str:
        """This peer's mesh address (the agent's ``--mesh-ip``)."""
        return (await self.status()).mesh_ip

    async def peers(self) -> Sequence[PeerEntry]:
        """Every remote peer of the agent's current map."""
        return [
            PeerEntry(name=p.name, mesh_ip=p.mesh_ip, host_key_line=p.host_key, peer_id=p.id)
            for p in (await self.status()).peers
        ]

    async def aclose(self) -> None:
        """Nothing stays open between calls."""
        return None


async def open_agent(state_dir: Path | None) -> AgentLink:
    """Connect to the agent serving ``state_dir`` (default: the agent's default).

    Raises:
        LinkError: no agent answers there, or it is not registered yet.
    """
    path = agent_socket(state_dir)
    if not path.exists():
        raise LinkError(f"no meshssh agent socket at {path}")
    no_browser = bool(os.environ.get("MESHSSH_NO_BROWSER"))
    link = AgentLink(path.parent, open_browser=not no_browser and graphical())
    status = await link.status()
    if not status.registered:
        raise LinkError(f"the agent at {path} is not registered yet ({status.register_error})")
    return link
