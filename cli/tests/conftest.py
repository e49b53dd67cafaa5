"""Fixtures for the client tests, on the loopback mesh: the remote peer ``demo-server`` on
127.0.0.2, this peer on 127.0.0.3, and OpenSSH set up with a drop-in the way a user's
ssh_config includes it.

- ``agent_mesh`` (agent_mesh.py): the real system, nothing stood in for: meshssh-authn,
  meshssh-policy, demo-server's agent running meshssh-sshd, the laptop's agent writing the
  drop-in, alice signed in with ``meshssh login``. ``peer_features`` sets the sshd switches.
- ``mesh`` / ``static_mesh``: the real meshssh-sshd (mesh_sshd.py: its map lets in only
  127.0.0.3) with the agent stood in for by ``static_link`` (a file of peers and tokens), for
  the tests that hand the client a fixed key or token (stale, refused, wrong audience) or
  count the tokens handed out, which the real agent does not allow; each says why.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_mesh import agent_mesh
from authn_provider import Provider, management, provider
from mesh_sshd import LOCAL_IP, PEER_IP, PEER_NAME, PeerFeatures, RealPeer, start_sshd
from nats.aio.client import Client as NATS
from static_link import write_launcher, write_link

from meshssh_agent.peers import PeerEntry
from meshssh_agent.ssh_config import DropIn, install, render
from meshssh_testkit import os_users
from meshssh_testkit.openssh import OpenSSH, RunResult
from meshssh_testkit.plugin import ServiceFactory

__all__ = ["LOCAL_IP", "PEER_IP", "PEER_NAME", "Provider", "agent_mesh", "management", "provider"]


@dataclass
class Mesh:
    """OpenSSH configured with the meshssh drop-in, pointed at one running peer."""

    peer: RealPeer
    token: str
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
        token: str | None = None,
        cached_token: str | None = None,
    ) -> None:
        """Change what the link says (the pinned key, the fresh and the cached token)."""
        write_link(
            self.state_dir,
            [self.entry(host_key_line)],
            LOCAL_IP,
            token if token is not None else self.token,
            cached_token=cached_token,
        )

    async def run(self, tool: str, *args: str, **kw: object) -> RunResult:
        """Run ssh/scp/sftp with only the test config (which includes the drop-in)."""
        return await self.openssh.run(tool, *args, options=["-F", str(self.config)], **kw)  # type: ignore[arg-type]


async def make_mesh(
    nc: NATS,
    nats_url: str,
    services: ServiceFactory,
    tmp_path: Path,
    openssh: OpenSSH,
    features: PeerFeatures,
) -> Mesh:
    peer = await start_sshd(nc, nats_url, services, tmp_path, features, sources=(f"{LOCAL_IP}/32",))
    state_dir = tmp_path / "state"
    launcher = write_launcher(tmp_path / "meshssh")
    mesh = Mesh(
        peer,
        peer.issuer.mint("alice-id"),
        state_dir,
        launcher,
        tmp_path / "meshssh.conf",
        tmp_path / "ssh_config",
        openssh,
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
    nc: NATS,
    nats_url: str,
    services: ServiceFactory,
    tmp_path: Path,
    openssh: OpenSSH,
    peer_features: PeerFeatures,
) -> Mesh:
    """A running meshssh-sshd and OpenSSH with the drop-in (``services`` stops the server)."""
    return await make_mesh(nc, nats_url, services, tmp_path, openssh, peer_features)


@pytest.fixture
async def static_mesh(
    nc: NATS,
    nats_url: str,
    services: ServiceFactory,
    tmp_path: Path,
    openssh: OpenSSH,
) -> Mesh:
    """``mesh`` (meshssh-sshd and the static link) where a module's ``mesh`` is the real agent."""
    return await make_mesh(nc, nats_url, services, tmp_path, openssh, PeerFeatures())


@pytest.fixture(scope="module")
def local_user() -> Iterator[str]:
    """A local account the sessions switch to (made as root, removed after); else ours."""
    if os.geteuid() != 0:
        yield getpass.getuser()
        return
    with os_users.throwaway_user(shell="/bin/sh") as name:  # password "*": not locked
        yield name
