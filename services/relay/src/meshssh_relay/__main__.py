"""Entry point of meshssh-relay: the per-peer port-22 relay.

``meshssh-relay --cleanup`` (with the same ``--peer-id``/``--listen``/``--sshd``/``--mode``
settings) removes the nftables rule a killed relay left behind and exits; the agent runs it
after a relay it had to kill.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from meshssh_common.errors import ConfigError
from meshssh_common.service import service_main
from meshssh_common.settings import parse_settings
from meshssh_relay.server import build_redirect, serve
from meshssh_relay.settings import RelaySettings

__all__ = ["main"]

_DESCRIPTION = "meshssh the per-peer port-22 relay"


def _cleanup(settings: RelaySettings) -> int:
    redirect = build_redirect(settings)
    if redirect is not None:
        asyncio.run(redirect.remove())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run meshssh-relay; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--cleanup" in args:
        try:
            return _cleanup(parse_settings(RelaySettings, args, prog="meshssh-relay"))
        except ConfigError as e:
            sys.stderr.write(f"meshssh-relay: bad setting {e}\n")
            return 2
    return service_main("relay", RelaySettings, serve, args, description=_DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
