"""``meshssh``: the end-user client and peer agent (SPEC §9).

Subcommands are registered by their own modules; this module owns only the top-level parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshssh_cli import down, login, status, up
from meshssh_common.version import VERSION

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level ``meshssh`` parser."""
    parser = argparse.ArgumentParser(
        prog="meshssh", description="meshssh: identity-aware SSH for your mesh"
    )
    parser.add_argument("--version", action="version", version=f"meshssh {VERSION}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (up, down, status, login):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshssh``; returns the process exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args))  # each subcommand's register() sets its runner


if __name__ == "__main__":
    sys.exit(main())
