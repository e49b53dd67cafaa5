"""Entry point of meshssh-gateway: the browser SSH gateway (issue 20).

The setup key comes from ``MESHSSH_SETUP_KEY`` (removed from the environment at once) or
``--setup-key-file``; never from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from meshssh_common.errors import ConfigError
from meshssh_common.logs import configure_logging, service_logger
from meshssh_common.registration import take_setup_key
from meshssh_common.settings import parse_settings
from meshssh_gateway.gateway import run_gateway
from meshssh_gateway.settings import GatewaySettings

__all__ = ["main"]

_DESCRIPTION = "meshssh the browser SSH gateway: dashboard terminals to peers' sshd"


def main(argv: Sequence[str] | None = None) -> int:
    """Run meshssh-gateway; exit 0 on a clean stop, 1 refused or crashed, 2 a bad setting."""
    try:
        settings = parse_settings(
            GatewaySettings, argv, prog="meshssh-gateway", description=_DESCRIPTION
        )
        setup_key = take_setup_key(settings.setup_key_file)
    except ConfigError as e:
        sys.stderr.write(f"meshssh-gateway: bad setting {e}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # a line per WebSocket
    log = service_logger("gateway", settings.instance)
    if settings.nats_creds is not None:
        log.warning(
            "--nats-creds / MESHSSH_NATS_CREDS ignored: the gateway's NATS identity comes from "
            "its registration (<state-dir>/nats.creds)",
            extra={"ignored": str(settings.nats_creds)},
        )
    try:
        return asyncio.run(run_gateway(settings, setup_key=setup_key, log=log))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
