"""The agent's Unix-socket control plane (messages in :mod:`meshssh_common.wire.agent`)."""

__all__: list[str] = []
