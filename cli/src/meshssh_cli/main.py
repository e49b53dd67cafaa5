"""``meshssh``: the end-user client and peer agent (SPEC §9).

Subcommands are registered by their own modules; this module owns only the top-level parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshssh_cli import login
from meshssh_common.version import VERSION

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level ``meshssh`` parser."""
    parser = argparse.ArgumentParser(
        prog="meshssh", description="meshssh: identity-aware SSH for your mesh"
    )
    parser.add_argument("--version", action="version", version=f"meshssh {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    login.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshssh``; returns the process exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run = getattr(args, "run", None)  # each subcommand's register() sets its runner
    if run is not None:
        return int(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
