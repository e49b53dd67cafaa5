"""The test seam for the client: an in-test ``ClientLink`` (a dict of peers and fixed tokens).

The peer agent (``meshssh up``) and its token cache are built separately; until they are
merged, tests stand in for them here with the narrow protocols of
``meshssh_cli.ssh.peer_directory``: the peers, the local mesh address and the tokens come from
``<state-dir>/test-link.json``, and every token handed out is logged to
``<state-dir>/tokens.log``. Everything on the SSH side stays real.

The drop-in points OpenSSH at a launcher that runs ``meshssh_cli``'s real commands with this
link (``main``), since a ProxyCommand is a separate process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from meshssh_agent.peers import PeerEntry, find_peer
from meshssh_cli.ssh import command as ssh
from meshssh_cli.ssh.errors import LinkError
from meshssh_cli.ssh.peer_directory import IssuedToken

LINK_FILE = "test-link.json"
TOKEN_LOG = "tokens.log"


def write_link(
    state_dir: Path,
    peers: Sequence[PeerEntry],
    local_ip: str,
    token: str,
    *,
    cached_token: str | None = None,
) -> None:
    """Describe the link for ``state_dir``.

    ``cached_token`` is what the agent's cache holds (default: ``token``); ``""`` is an empty
    cache, so the first request already runs a "device flow" and gets ``token``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "peers": [asdict(p) for p in peers],
        "local_ip": local_ip,
        "token": token,
        "cached_token": cached_token if cached_token is not None else token,
    }
    (state_dir / LINK_FILE).write_text(json.dumps(data))


def issued(state_dir: Path) -> list[str]:
    """The tokens handed out so far, as ``cached:<token>`` or ``fresh:<token>``."""
    log = state_dir / TOKEN_LOG
    return log.read_text().split() if log.exists() else []


class StaticLink:
    """``ClientLink`` from a JSON file: TokenSource and PeerDirectory without an agent."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        data = json.loads((state_dir / LINK_FILE).read_text())
        self._peers = [PeerEntry(**p) for p in data["peers"]]
        self._local_ip = str(data["local_ip"])
        self._token = str(data["token"])
        self._cached = str(data["cached_token"])

    @classmethod
    async def open(cls, state_dir: Path | None) -> StaticLink:
        if state_dir is None or not (state_dir / LINK_FILE).exists():
            raise LinkError(f"no test link in {state_dir}")
        return cls(state_dir)

    async def get_token(self, *, force_new: bool = False) -> IssuedToken:
        if force_new or not self._cached:
            token = IssuedToken(self._token, cached=False)
        else:
            token = IssuedToken(self._cached, cached=True)
        with (self._dir / TOKEN_LOG).open("a") as f:
            f.write(f"{'cached' if token.cached else 'fresh'}:{token.value}\n")
        return token

    async def peer_token(self, peer: PeerEntry) -> IssuedToken | None:
        """No agent here to exchange through: the client falls back to the IdP token."""
        return None

    async def forget_token(self) -> None:
        """Empty the "cache" (the next get_token is a fresh one) and log ``forgotten``."""
        data = json.loads((self._dir / LINK_FILE).read_text())
        data["cached_token"] = ""
        (self._dir / LINK_FILE).write_text(json.dumps(data))
        self._cached = ""
        with (self._dir / TOKEN_LOG).open("a") as f:
            f.write("forgotten\n")

    async def lookup(self, host: str) -> PeerEntry | None:
        return find_peer(self._peers, host)

    async def local_mesh_ip(self) -> str:
        return self._local_ip

    async def peers(self) -> list[PeerEntry]:
        return list(self._peers)

    async def aclose(self) -> None:
        return None


def main(argv: Sequence[str]) -> int:
    """``meshssh <argv>`` with the static link (the launcher the drop-in runs)."""
    if argv[:1] == ["ssh"]:
        return ssh.run(argv[1:], open_link=StaticLink.open)
    if argv[:1] == ["config"]:
        from meshssh_cli.commands import (
            config as config_cmd,  # lazily, as in `meshssh`: proxy starts stay lean
        )

        return config_cmd.run_argv(argv[1:], open_link=StaticLink.open)
    sys.stderr.write(f"test launcher: unsupported {list(argv)}\n")
    return 2


def write_launcher(path: Path) -> Path:
    """An executable that runs :func:`main` with this interpreter (the drop-in's meshssh)."""
    tests = Path(__file__).resolve().parent
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(tests)!r})\n"
        "from static_link import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    path.chmod(0o755)
    return path
