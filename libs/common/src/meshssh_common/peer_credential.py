"""The peer credential: the id and secret management issued to a registered peer.

Written to a file (0600) after the first registration (with a setup key) and sent on every
later one (a restart, a renewal of the NATS JWT), so a peer needs its setup key only once. The
agent keeps it at ``<state-dir>/peer.json``, the gateway in its own state dir.

Example::

    cred = load_credential(path)          # None: never registered (or the file is bad)
    save_credential(path, PeerCredential(peer_id="p-1a2b", credential="secret"))
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from meshssh_common.secret_files import write_secret_file

__all__ = ["PeerCredential", "load_credential", "save_credential"]


class PeerCredential(msgspec.Struct, frozen=True, kw_only=True):
    """The peer id and the secret that re-registers it without a setup key."""

    peer_id: str
    credential: str
    management_url: str = ""


def load_credential(path: Path) -> PeerCredential | None:
    """The stored credential, or None when the peer never registered (or the file is bad)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=PeerCredential)
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


def save_credential(path: Path, cred: PeerCredential) -> None:
    """Write the credential atomically, mode 0600 from creation on."""
    write_secret_file(path, msgspec.json.encode(cred))
