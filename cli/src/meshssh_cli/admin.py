"""``meshctl``: the operator CLI over the management REST API (SPEC §9)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshssh_common.version import VERSION

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level ``meshctl`` parser."""
    parser = argparse.ArgumentParser(prog="meshctl", description="meshssh operator CLI")
    parser.add_argument("--version", action="version", version=f"meshctl {VERSION}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshctl``; returns the process exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
