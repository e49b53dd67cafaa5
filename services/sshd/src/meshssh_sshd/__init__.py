"""meshssh-sshd: the per-peer SSH server."""

from meshssh_sshd.settings import SshdSettings

__all__ = ["SshdSettings"]
