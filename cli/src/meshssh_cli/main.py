"""``meshssh``: the end-user client and peer agent (SPEC §9).

Subcommands are registered by their own modules; this module owns only the top-level parser.
It imports only the module of the subcommand being run (``meshssh down`` does not load the
agent, ``meshssh ssh proxy`` loads neither the agent nor the HTTP clients): OpenSSH starts
``meshssh ssh proxy`` for every connection through the drop-in, so start-up time is latency.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {
    "up": "meshssh_cli.commands.up",
    "down": "meshssh_cli.commands.down",
    "status": "meshssh_cli.commands.status",
    "login": "meshssh_cli.commands.login",
    "ssh": "meshssh_cli.ssh.command",
    "config": "meshssh_cli.commands.config",
}
"""Subcommand -> the module whose ``register(subparsers)`` adds it, in ``--help`` order."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level ``meshssh`` parser: every subcommand, or ``only`` that one."""
    import argparse

    from meshssh_common.version import VERSION

    parser = argparse.ArgumentParser(
        prog="meshssh", description="meshssh: identity-aware SSH for your mesh"
    )
    parser.add_argument("--version", action="version", version=f"meshssh {VERSION}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshssh``; returns the process exit code (2 for usage errors)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["ssh"]:
        # `ssh` parses its own words (OpenSSH style), and OpenSSH runs `ssh detect` and
        # `ssh proxy` for every connection: no parser to build at all
        from meshssh_cli.ssh import command as ssh

        return ssh.run(words[1:])
    parser = build_parser(words[0] if words[:1] and words[0] in COMMANDS else None)
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args))  # each subcommand's register() sets its runner


if __name__ == "__main__":
    sys.exit(main())
