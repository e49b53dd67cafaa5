"""meshssh-gateway: the browser SSH gateway, a mesh peer of its own (issue 20).

Modules, one noun each: :mod:`settings`, :mod:`metrics`, :mod:`mesh_peer` (registration, bus
identity, map), :mod:`tickets` (redemption at policy), :mod:`session_limits`,
:mod:`ssh_target` (login to a target's sshd), :mod:`terminal` (the WebSocket ↔ PTY bridge),
:mod:`terminal_endpoint` (``/v1/terminal``), :mod:`audit`, :mod:`gateway` (the process).
"""

__all__: list[str] = []
