"""The `meshssh` subcommands that manage the local agent: up, down, status, login, config."""

__all__: list[str] = []
