"""`meshssh ssh proxy`: the ProxyCommand that bridges OpenSSH to a mesh peer."""

__all__: list[str] = []
