"""meshssh client side: the ``meshssh`` client and the ``meshctl`` operator CLI.

``meshssh up`` starts the peer agent (:mod:`meshssh_agent`).
"""

__all__: list[str] = []
