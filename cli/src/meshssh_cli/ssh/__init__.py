"""`meshssh ssh` and its helpers: arguments, dialling, the session, the terminal, detection."""

__all__: list[str] = []
