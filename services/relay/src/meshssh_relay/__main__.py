"""Entry point of meshssh-relay: the per-peer port-22 relay."""

from __future__ import annotations

import sys

from meshssh_common.service import service_main
from meshssh_relay.server import serve
from meshssh_relay.settings import RelaySettings

__all__ = ["main"]


def main() -> int:
    """Run meshssh-relay; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    return service_main(
        "relay", RelaySettings, serve, description="meshssh the per-peer port-22 relay"
    )


if __name__ == "__main__":
    sys.exit(main())
