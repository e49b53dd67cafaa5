"""Fixtures for the client tests: a real SSH peer on the loopback mesh, and OpenSSH set up
with the generated drop-in, the way a user's ssh_config includes it.

The mesh: the remote peer ``demo-server`` on 127.0.0.2, this peer on 127.0.0.3.

Stand-ins (``ssh_peer``: an asyncssh peer; ``static_link``: the agent's link from a file),
because the real system per test (authn, policy, two agents, sshd; tried) doubles the suite's
time past its limit until one system can be shared per module; the same client paths against
the real agent and meshssh-sshd run in test_proxy_meshssh_sshd.py and tests/e2e.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from authn_provider import Provider, management, provider
from ssh_peer import MeshPeer, PeerFeatures, start_peer
from static_link import write_launcher, write_link

from meshssh_agent.peers import PeerEntry
from meshssh_agent.ssh_config import DropIn, install, render
from meshssh_testkit.openssh import OpenSSH, RunResult

PEER_NAME = "demo-server"
PEER_IP = "127.0.0.2"
LOCAL_IP = "127.0.0.3"
__all__ = ["Provider", "management", "provider"]  # login-test fixtures

TOKEN = "eyJ0ZXN0IjoidG9rZW4ifQ.test-token.signature"


@dataclass
class Mesh:
    """OpenSSH configured with the meshssh drop-in, pointed at one running peer."""

    peer: MeshPeer
    state_dir: Path
    launcher: Path
    dropin: Path
    config: Path
    openssh: OpenSSH

    def entry(self, host_key_line: str | None = None) -> PeerEntry:
        return PeerEntry(PEER_NAME, PEER_IP, host_key_line or self.peer.host_key_line)

    def relink(
        self,
        *,
        host_key_line: str | None = None,
        token: str = TOKEN,
        cached_token: str | None = None,
    ) -> None:
        """Change what the link says (the pinned key, the fresh and the cached token)."""
        write_link(
            self.state_dir,
            [self.entry(host_key_line)],
            LOCAL_IP,
            token,
            cached_token=cached_token,
        )

    async def run(self, tool: str, *args: str, **kw: object) -> RunResult:
        """Run ssh/scp/sftp with only the test config (which includes the drop-in)."""
        return await self.openssh.run(tool, *args, options=["-F", str(self.config)], **kw)  # type: ignore[arg-type]


async def make_mesh(tmp_path: Path, openssh: OpenSSH, features: PeerFeatures) -> Mesh:
    peer = await start_peer(TOKEN, features=features, host=PEER_IP)
    state_dir = tmp_path / "state"
    launcher = write_launcher(tmp_path / "meshssh")
    mesh = Mesh(
        peer, state_dir, launcher, tmp_path / "meshssh.conf", tmp_path / "ssh_config", openssh
    )
    mesh.relink()
    install(render([PEER_NAME, PEER_IP], DropIn(str(launcher), state_dir)), mesh.dropin)
    mesh.config.write_text(
        f"Port {peer.port}\nBatchMode yes\nConnectTimeout 20\nInclude {mesh.dropin}\n"
    )
    return mesh


@pytest.fixture
def peer_features(request: pytest.FixtureRequest) -> PeerFeatures:
    """What the peer allows: everything, or what indirect parametrization gives."""
    given: PeerFeatures | None = getattr(request, "param", None)
    return given or PeerFeatures()


@pytest.fixture
async def mesh(
    tmp_path: Path, openssh: OpenSSH, peer_features: PeerFeatures
) -> AsyncIterator[Mesh]:
    """A running peer and OpenSSH with the drop-in; the peer stops after the test."""
    built = await make_mesh(tmp_path, openssh, peer_features)
    try:
        yield built
    finally:
        await built.peer.stop()
