"""Entry point of meshssh-sshd: the per-peer SSH server."""

from __future__ import annotations

import sys

from meshssh_common.service import service_main
from meshssh_sshd.server import serve
from meshssh_sshd.settings import SshdSettings

__all__ = ["main"]


def main() -> int:
    """Run meshssh-sshd; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    return service_main("sshd", SshdSettings, serve, description="meshssh the per-peer SSH server")


if __name__ == "__main__":
    sys.exit(main())
