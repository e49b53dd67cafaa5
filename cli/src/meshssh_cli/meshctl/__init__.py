"""`meshctl`: the operator CLI over the management REST API."""

__all__: list[str] = []
