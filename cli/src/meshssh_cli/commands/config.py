"""``meshssh config install|uninstall``: the OpenSSH drop-in for the current map's peers.

``install`` asks the agent for the current peers and writes the drop-in
(:mod:`meshssh_agent.ssh_config`: validated names, split lines, atomic write) to ``--file``, or
by default to ``/etc/ssh/ssh_config.d/99-meshssh.conf`` as root and to ``~/.ssh/meshssh.conf``
(included from ``~/.ssh/config``) otherwise. ``uninstall`` removes it. The agent keeps the
file current through :func:`sync_dropin` as the map changes, and removes it on
``meshssh down``. Setting ``MESHSSH_DISABLE_SSH_CONFIG=1`` opts out: the agent then removes
the file instead of writing it, and ``install`` refuses.

Only peers with a pinned host key are listed: the proxy cannot verify any other, so plain
OpenSSH handles them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshssh_agent import ssh_config
from meshssh_agent.dropin import OPT_OUT_ENV, dropin_enabled, meshssh_executable, sync_dropin
from meshssh_agent.server_marks import marks_dir
from meshssh_cli.link.opener import default_state_dir, open_agent
from meshssh_cli.ssh.errors import ClientError
from meshssh_cli.ssh.peer_directory import LinkOpener

__all__ = ["register", "run", "run_argv"]


def register(subparsers: Any) -> None:
    """Add ``config install|uninstall`` to the top-level parser."""
    parser = subparsers.add_parser("config", help="install or remove the OpenSSH drop-in")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    for name, text in (("install", "write the drop-in"), ("uninstall", "remove the drop-in")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--file", type=Path, default=None, help="drop-in path")
        sub.add_argument("--state-dir", type=Path, default=None, help="the agent's state dir")
    parser.set_defaults(run=lambda ns: run(ns))


async def _install(ns: argparse.Namespace, open_link: LinkOpener, path: Path) -> int:
    try:
        link = await open_link(ns.state_dir)
        try:
            peers = await link.peers()
        finally:
            await link.aclose()
    except ClientError as e:
        sys.stderr.write(f"meshssh: {e.render()}\n")
        return e.exit_code
    marks = marks_dir((ns.state_dir or default_state_dir()).absolute())
    sync_dropin(
        peers, path=path, executable=meshssh_executable(), state_dir=ns.state_dir, marks=marks
    )
    sys.stdout.write(f"meshssh: OpenSSH drop-in for {len(peers)} peers written to {path}\n")
    return 0


def run(ns: argparse.Namespace, *, open_link: LinkOpener = open_agent) -> int:
    """Run ``meshssh config install|uninstall``; returns the exit status."""
    path: Path = ns.file or ssh_config.default_path()
    if ns.config_action == "uninstall":
        removed = ssh_config.uninstall(path)
        sys.stdout.write(f"meshssh: {'removed' if removed else 'no drop-in at'} {path}\n")
        return 0
    if not dropin_enabled():
        sys.stderr.write(f"meshssh: the OpenSSH drop-in is disabled by {OPT_OUT_ENV}\n")
        return 1
    return asyncio.run(_install(ns, open_link, path))


def run_argv(argv: Sequence[str], *, open_link: LinkOpener = open_agent) -> int:
    """Parse ``config ...`` words and run them (for callers without the top-level parser)."""
    parser = argparse.ArgumentParser(prog="meshssh")
    register(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(["config", *argv]), open_link=open_link)
