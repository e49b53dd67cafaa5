"""Entry point of meshssh-agent: the peer agent that ``meshssh up`` starts.

The setup key comes from ``MESHSSH_SETUP_KEY`` (removed from the environment at once, so the
children never inherit it) or ``--setup-key-file``; never from the command line, where ``ps``
would show it to every local user.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from meshssh_agent.settings import AgentSettings
from meshssh_common.errors import ConfigError
from meshssh_common.logs import configure_logging, service_logger
from meshssh_common.registration import take_setup_key
from meshssh_common.settings import parse_settings

__all__ = ["main"]

_DESCRIPTION = "meshssh the peer agent: registration, the map, sshd and relay, the local socket"


def main(argv: Sequence[str] | None = None) -> int:
    """Run meshssh-agent; exit 0 on a clean stop, 1 when refused or crashed, 2 on a bad setting."""
    try:
        settings = parse_settings(
            AgentSettings, argv, prog="meshssh-agent", description=_DESCRIPTION
        )
        if "instance" not in settings.model_fields_set:
            settings = settings.model_copy(update={"instance": settings.name})
        setup_key = take_setup_key(settings.setup_key_file)
        configure_logging(settings.log_level, settings.log_format)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe
        from meshssh_agent.agent import Agent  # after logging: it resolves the relay mode

        agent = Agent(settings, setup_key=setup_key, log=service_logger("agent", settings.instance))
    except ConfigError as e:
        sys.stderr.write(f"meshssh-agent: bad setting {e}\n")
        return 2
    try:
        return asyncio.run(agent.run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
