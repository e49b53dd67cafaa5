"""meshssh-relay: the per-peer port-22 relay."""

from meshssh_relay.settings import RelaySettings

__all__ = ["RelaySettings"]
