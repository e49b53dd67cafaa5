"""meshssh-policy: management plane: peers, groups, policies, network maps."""

from meshssh_policy.settings import PolicySettings

__all__ = ["PolicySettings"]
