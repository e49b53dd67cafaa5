"""meshssh test kit (dev only): real nats-server, OpenSSH client helpers, service processes."""

from meshssh_testkit.natsd import NatsServer, NatsServerError, nats_server_binary
from meshssh_testkit.oidc_issuer import OidcIssuer
from meshssh_testkit.openssh import OpenSSH, RunResult, openssh_available
from meshssh_testkit.process import ServiceProcess, script

__all__ = [
    "NatsServer",
    "NatsServerError",
    "OidcIssuer",
    "OpenSSH",
    "RunResult",
    "ServiceProcess",
    "nats_server_binary",
    "openssh_available",
    "script",
]
