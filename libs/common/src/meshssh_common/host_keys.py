"""The peer's SSH host key: Ed25519, generated once, kept in the state dir with mode 0600.

The agent creates it before registering (its public half goes to the management plane, which
distributes it for host-key pinning); sshd loads the same file.

Example::

    key = load_or_create_host_key(state_dir / "ssh_host_ed25519_key")
    key.public_line   # "ssh-ed25519 AAAA..."
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshssh_common.errors import ConfigError
from meshssh_common.secret_files import write_secret_file

__all__ = ["HostKey", "fingerprint", "load_or_create_host_key"]


@dataclass(frozen=True, slots=True)
class HostKey:
    """Where the private key lives and its public half as an OpenSSH line."""

    path: Path
    public_line: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as OpenSSH prints it."""
        return fingerprint(self.public_line)


def fingerprint(public_line: str) -> str:
    """The OpenSSH SHA256 fingerprint of a public key line (``type base64 [comment]``)."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_or_create_host_key(path: Path) -> HostKey:
    """Load the Ed25519 host key at ``path``, creating it (mode 0600) if it does not exist.

    Raises:
        ConfigError: the file exists but is not a private Ed25519 key in OpenSSH format, or
            it is readable by others (mode wider than 0600).
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_secret_file(path, pem)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(str(path), f"host key mode is {mode:o}; it must be 600")
    try:
        loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(path), f"not an OpenSSH private key: {e}") from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(str(path), "host key must be Ed25519")
    public = loaded.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return HostKey(path, public.decode())
