"""Entry point of meshssh-policy: management plane: peers, groups, policies, network maps."""

from __future__ import annotations

import sys

from meshssh_common.service import service_main
from meshssh_policy.server import serve
from meshssh_policy.settings import PolicySettings

__all__ = ["main"]


def main() -> int:
    """Run meshssh-policy; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    return service_main(
        "policy",
        PolicySettings,
        serve,
        description="meshssh management plane: peers, groups, policies, network maps",
    )


if __name__ == "__main__":
    sys.exit(main())
