"""The agent's files in its state dir: the directory itself, the peer credential, the lock.

The peer's credential (``peer.json``: :mod:`meshssh_common.peer_credential`) and NATS identity
(``nats.nk``, ``nats.creds``: :mod:`meshssh_common.bus_identity`) live here too.

:class:`StateDir` names every file (the socket's name is the protocol's, ``SOCKET_NAME``); this
module stays light, as ``meshssh ssh proxy`` and ``meshssh down`` import it.

Modes: the state dir is 0711 (other local users may reach the socket inside but cannot list the
dir), the credential, the host key and the NATS files are 0600, the socket is 0666 (every
local user may talk to the agent; the agent checks each caller's uid itself).

The lock file is held with ``flock`` for the agent's whole life and records its pid: a second
agent on the same state dir is refused, and the kernel drops the lock when the agent exits, so
``meshssh down`` knows when it is gone (even before a zombie is reaped).

Example::

    files = StateDir(Path("/var/lib/meshssh"))
    lock = AgentLock.acquire(files.lock)   # raises AlreadyRunning(pid)
    identity = BusIdentity(files.nats_seed, files.nats_creds)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from meshssh_common.errors import ConfigError, MeshError
from meshssh_common.wire.agent import SOCKET_NAME

__all__ = [
    "AgentLock",
    "AlreadyRunning",
    "StateDir",
    "default_name",
    "default_state_dir",
    "lock_holder",
    "prepare_state_dir",
]


def default_state_dir() -> Path:
    """``/var/lib/meshssh`` for root, else ``$XDG_STATE_HOME/meshssh`` (``~/.local/state``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/meshssh")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshssh"


def default_name() -> str:
    """This machine's host name as a DNS label (``My_Laptop.local`` → ``my-laptop``)."""
    label = socket.gethostname().split(".")[0].lower()
    label = re.sub(r"[^a-z0-9-]+", "-", label).strip("-")[:63].strip("-")
    return label or "peer"


@dataclass(frozen=True, slots=True)
class StateDir:
    """The files of one agent's state dir."""

    path: Path

    @property
    def host_key(self) -> Path:
        """The peer's Ed25519 SSH host key (0600)."""
        return self.path / "ssh_host_ed25519_key"

    @property
    def credential(self) -> Path:
        """The peer id and credential the management plane issued (0600)."""
        return self.path / "peer.json"

    @property
    def nats_seed(self) -> Path:
        """The seed of the peer's NATS user key (0600; it never leaves this file)."""
        return self.path / "nats.nk"

    @property
    def nats_creds(self) -> Path:
        """The peer's NATS creds file: its JWT from registration and its seed (0600)."""
        return self.path / "nats.creds"

    @property
    def socket(self) -> Path:
        """The agent's Unix socket for the local CLI."""
        return self.path / SOCKET_NAME

    @property
    def sshd_relay_socket(self) -> Path:
        """meshssh-sshd's relay socket (sshd makes its dir 0700 and the socket 0600)."""
        return self.path / "sshd" / "relay.sock"

    @property
    def lock(self) -> Path:
        """Held (flock) by the running agent; records its pid."""
        return self.path / "agent.lock"

    @property
    def log(self) -> Path:
        """Where a daemonized agent writes its log."""
        return self.path / "agent.log"


class AlreadyRunning(MeshError):
    """Another agent holds this state dir."""

    code = "conflict"

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"an agent is already running for {state_dir} ({who})")
        self.pid = pid


def prepare_state_dir(path: Path) -> None:
    """Create the state dir (0711) if needed.

    Raises:
        ConfigError: it cannot be created, or it is writable by others.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o711)
    except OSError as e:
        raise ConfigError("--state-dir", f"cannot create {path}: {e.strerror}") from e
    mode = path.stat().st_mode & 0o777
    if mode & 0o022:
        raise ConfigError("--state-dir", f"{path} is writable by others (mode {mode:o})")


def lock_holder(path: Path) -> int | None:
    """The pid of the agent holding ``path``, or None when no agent holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class AgentLock:
    """The running agent's exclusive lock on its state dir."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, path: Path) -> AgentLock:
        """Take the lock and write our pid into it.

        Raises:
            AlreadyRunning: another agent holds it.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(path.parent, int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        """Give the lock up (the kernel also does when the process exits)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
