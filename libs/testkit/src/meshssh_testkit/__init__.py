"""meshssh test kit (dev only): real nats-server, OpenSSH client helpers, service processes."""

from meshssh_testkit.natscluster import NatsCluster
from meshssh_testkit.natsd import NatsServer, NatsServerError, nats_server_binary
from meshssh_testkit.oidc_issuer import OidcIssuer
from meshssh_testkit.openssh import OpenSSH, openssh_available
from meshssh_testkit.process import (
    CommandFailed,
    CommandTimeout,
    RunResult,
    ServiceProcess,
    run_command,
    run_command_sync,
    script,
)

__all__ = [
    "CommandFailed",
    "CommandTimeout",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "OidcIssuer",
    "OpenSSH",
    "RunResult",
    "ServiceProcess",
    "nats_server_binary",
    "openssh_available",
    "run_command",
    "run_command_sync",
    "script",
]
