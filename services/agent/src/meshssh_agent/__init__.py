"""meshssh peer agent: registration, the map, sshd and relay, the drop-in, the local socket."""

__all__: list[str] = []
