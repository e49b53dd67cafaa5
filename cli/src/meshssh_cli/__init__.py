"""meshssh client side: the ``meshssh`` agent and client, and the ``meshctl`` operator CLI."""

__all__: list[str] = []
