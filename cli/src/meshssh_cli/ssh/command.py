"""The ``meshssh ssh`` command and its two helpers for OpenSSH, ``detect`` and ``proxy``.

- ``meshssh ssh [options] [user@]host [command...]``: connect directly (argument syntax as
  OpenSSH's, see :mod:`meshssh_cli.ssh.args`; the session in :mod:`meshssh_cli.ssh.session`);
- ``meshssh ssh detect [--state-dir DIR] HOST PORT``: exit 0 for a MeshSSH server (JWT or
  not), 2 otherwise, within 5 s; the drop-in's ``Match exec``;
- ``meshssh ssh proxy [--state-dir DIR] HOST PORT``: the drop-in's ``ProxyCommand``
  (:mod:`meshssh_cli.proxy.command`).

A peer literally named ``detect`` or ``proxy`` is reached as ``user@detect``. Imports of the
SSH machinery are deferred to the subcommand that needs it, so ``detect`` (run by OpenSSH for
a mesh peer without a server marker) starts fast, and asyncssh is imported through
:func:`~meshssh_cli.ssh.library.import_asyncssh` (no subprocesses looking for liboqs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from meshssh_cli.link.opener import open_agent
from meshssh_cli.ssh.detect import probe
from meshssh_cli.ssh.errors import ClientError
from meshssh_cli.ssh.library import import_asyncssh
from meshssh_cli.ssh.peer_directory import ClientLink, LinkOpener

__all__ = ["DETECT_TIMEOUT", "register", "run"]

DETECT_TIMEOUT = 5.0
_NOT_MESHSSH = 2


def register(subparsers: Any) -> None:
    """Add ``ssh`` to the top-level parser; it parses its own arguments, OpenSSH style."""
    from meshssh_cli.ssh.args import USAGE

    parser = subparsers.add_parser(
        "ssh",
        help="connect to a mesh peer (also: ssh detect, ssh proxy for OpenSSH)",
        usage=USAGE,
        add_help=False,
        prefix_chars="\0",  # every word, options included, goes to run() untouched
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(run=lambda ns: run(ns.argv))


def _helper_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"meshssh ssh {name}")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    return parser


async def _with_link(
    open_link: LinkOpener, state_dir: Path | None, body: Callable[[ClientLink], Awaitable[int]]
) -> int:
    try:
        link = await open_link(state_dir)
        try:
            return await body(link)
        finally:
            await link.aclose()
    except ClientError as e:
        sys.stderr.write(f"meshssh: {e.render()}\n")
        return e.exit_code


async def _detect(open_link: LinkOpener, state_dir: Path | None, host: str, port: int) -> int:
    """Probe only mesh peers, from this peer's mesh address (what the server will accept)."""
    try:
        async with asyncio.timeout(DETECT_TIMEOUT) as deadline:
            link = await open_link(state_dir)
            try:
                peer = await link.lookup(host)
                if peer is None:
                    return _NOT_MESHSSH
                source = await link.local_mesh_ip()
            finally:
                await link.aclose()
            left = (deadline.when() or 0) - asyncio.get_running_loop().time()
            found = await probe(peer.mesh_ip, port, source=source, timeout=max(left, 0.1))
            return 0 if found.is_meshssh else _NOT_MESHSSH
    except (ClientError, OSError, TimeoutError):
        return _NOT_MESHSSH


def _run_detect(argv: Sequence[str], open_link: LinkOpener) -> int:
    ns = _helper_parser("detect").parse_args(argv)
    return asyncio.run(_detect(open_link, ns.state_dir, ns.host, ns.port))


def _run_proxy(argv: Sequence[str], open_link: LinkOpener) -> int:
    import_asyncssh()
    from meshssh_cli.proxy.command import run_proxy

    ns = _helper_parser("proxy").parse_args(argv)

    async def body(link: ClientLink) -> int:
        return await run_proxy(link, ns.host, ns.port)

    return asyncio.run(_with_link(open_link, ns.state_dir, body))


def run(argv: Sequence[str], *, open_link: LinkOpener = open_agent) -> int:
    """Run ``meshssh ssh`` with ``argv`` (the words after ``ssh``); returns the exit status."""
    if argv[:1] == ["detect"]:
        return _run_detect(argv[1:], open_link)
    if argv[:1] == ["proxy"]:
        return _run_proxy(argv[1:], open_link)
    from meshssh_cli.ssh.args import USAGE, SshUsageError, parse_ssh_args  # not for the helpers

    try:
        args = parse_ssh_args(list(argv))
    except SshUsageError as e:
        sys.stderr.write(f"meshssh ssh: {e}\n{USAGE}")
        return 2
    if args.help:
        sys.stdout.write(USAGE)
        return 0
    import_asyncssh()
    from meshssh_cli.ssh.session import run_ssh

    async def body(link: ClientLink) -> int:
        return await run_ssh(link, args)

    return asyncio.run(_with_link(open_link, args.state_dir, body))
