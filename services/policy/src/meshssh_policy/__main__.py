"""Entry point of meshssh-policy: the management plane, or ``meshssh-policy init`` (bus keys)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from meshssh_policy.bus_init import init_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run meshssh-policy; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["init"]:
        return init_main(args[1:])
    # Imported here so that `init` starts fast (no web or NATS stack).
    from meshssh_common.service import service_main
    from meshssh_policy.server import serve
    from meshssh_policy.settings import PolicySettings

    return service_main(
        "policy",
        PolicySettings,
        serve,
        args,
        description="meshssh management plane: peers, groups, policies, network maps "
        "(`meshssh-policy init --help` makes the bus's keys)",
    )


if __name__ == "__main__":
    sys.exit(main())
