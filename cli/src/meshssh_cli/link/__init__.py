"""How the client reaches the local peer agent: the socket client and `meshssh ssh`'s link."""

__all__: list[str] = []
