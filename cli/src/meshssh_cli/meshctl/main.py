r"""``meshctl``: the operator CLI over the management REST API (SPEC §9).

Tables for people, ``--json`` for scripts (the API's JSON, unchanged). Errors are one line on
stderr and exit 1; usage errors exit 2. The API comes from ``--api`` / ``MESHSSH_API_URL``
(default ``http://127.0.0.1:8080``), the admin token from ``--token`` /
``MESHSSH_ADMIN_TOKEN``.

Example::

    meshctl peers ls
    meshctl peers ssh enable demo-server
    meshctl policies create "ops ssh" --source ops --destination servers --protocol ssh \\
        --authorized-group ops=root,deploy
    meshctl --json setup-keys create laptops --auto-group users --expires-in 7d
    meshctl audit --kind admin-change
    meshctl bus revoke UABC...   # the old key `meshssh-policy init --rotate` printed
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from meshssh_cli.meshctl import commands as cmd
from meshssh_cli.meshctl.api import AdminApi, AdminError, resolve_settings
from meshssh_cli.meshctl.audit import audit
from meshssh_cli.meshctl.sessions import sessions_export, sessions_ls, sessions_play
from meshssh_common.version import VERSION

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, AdminApi], cmd.Result]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common() -> argparse.ArgumentParser:
    """Flags accepted before or after the command (``meshctl peers ls --json``)."""
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument("--api", default=s, help="management API URL [env MESHSSH_API_URL]")
    common.add_argument("--token", default=s, help="admin token [env MESHSSH_ADMIN_TOKEN]")
    common.add_argument("--json", action="store_true", default=s, help="print JSON for scripts")
    return common


def _group(sub: Any, name: str, helptext: str, default: Handler) -> Any:
    parser = sub.add_parser(name, help=helptext, parents=[_common()])
    parser.set_defaults(handler=default)
    return parser.add_subparsers(dest=f"{name}_action", metavar="ACTION", parser_class=_Parser)


def _leaf(sub: Any, name: str, helptext: str, handler: Handler) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=helptext, parents=[_common()])
    parser.set_defaults(handler=handler)
    return parser


def _peers(sub: Any) -> None:
    peers = _group(sub, "peers", "list, show, switch SSH, remove peers", cmd.peers_ls)
    _leaf(peers, "ls", "list peers with online and SSH state", cmd.peers_ls)
    _leaf(peers, "show", "one peer, with live sessions", cmd.peers_show).add_argument("peer")
    ssh = _leaf(peers, "ssh", "switch a peer's SSH on or off", cmd.peers_ssh)
    ssh.add_argument("switch", choices=["enable", "disable"])
    ssh.add_argument("peer", help="peer id or name")
    _leaf(peers, "rm", "remove a peer", cmd.peers_rm).add_argument("peer")
    end = _leaf(
        peers,
        "end-session",
        "end a live SSH session (its client sees it close)",
        cmd.peers_end_session,
    )
    end.add_argument("peer", help="peer id or name")
    end.add_argument("session", help="session id (peers show lists them)")
    _leaf(peers, "netmap", "the network map published for a peer", cmd.peers_netmap).add_argument(
        "peer"
    )


def _users(sub: Any) -> None:
    users = _group(sub, "users", "list, add, remove users", cmd.users_ls)
    _leaf(users, "ls", "list users", cmd.users_ls)
    add = _leaf(users, "add", "add a user (ID = the IdP's user id, e.g. its sub)", cmd.users_add)
    add.add_argument("id")
    add.add_argument("--email", default="")
    add.add_argument("--name", default="")
    add.add_argument("--group", action="append", default=[], help="join a group (repeatable)")
    _leaf(users, "rm", "remove a user (its access ends)", cmd.users_rm).add_argument("id")


def _groups(sub: Any) -> None:
    groups = _group(sub, "groups", "list, create, change, remove groups", cmd.groups_ls)
    _leaf(groups, "ls", "list groups", cmd.groups_ls)
    _leaf(groups, "show", "one group", cmd.groups_show).add_argument("id")
    create = _leaf(groups, "create", "create a group", cmd.groups_create)
    create.add_argument("id")
    create.add_argument("--name", default="")
    create.add_argument("--peer", action="append", default=[], help="peer id or name")
    create.add_argument("--user", action="append", default=[], help="user id")
    _leaf(groups, "rm", "remove a group no policy uses", cmd.groups_rm).add_argument("id")
    for action in ("add", "remove"):
        members = _leaf(groups, action, f"{action} members", cmd.groups_members)
        members.set_defaults(action=action)
        members.add_argument("id")
        members.add_argument("--peer", action="append", default=[], help="peer (repeatable)")
        members.add_argument("--user", action="append", default=[], help="user (repeatable)")


def _policies(sub: Any) -> None:
    policies = _group(sub, "policies", "list, create, switch, remove policies", cmd.policies_ls)
    _leaf(policies, "ls", "list policies and their rules", cmd.policies_ls)
    _leaf(policies, "show", "one policy", cmd.policies_show).add_argument("id")
    create = _leaf(policies, "create", "create a one-rule policy (or --file)", cmd.policies_create)
    create.add_argument("name", nargs="?")
    create.add_argument("--id")
    create.add_argument("--description", default="")
    create.add_argument("--source", action="append", default=[], help="source group")
    create.add_argument("--destination", action="append", default=[], help="destination group")
    create.add_argument("--protocol", default="all", choices=["all", "tcp", "udp", "icmp", "ssh"])
    create.add_argument("--port", action="append", default=[], help="port (repeatable)")
    create.add_argument(
        "--port-range",
        action="append",
        default=[],
        type=cmd.parse_port_range,
        help="START-END (repeatable)",
    )
    create.add_argument("--action", default="accept", choices=["accept", "drop"])
    create.add_argument(
        "--authorized-group",
        action="append",
        default=[],
        metavar="GROUP[=USER,...]",
        help="ssh rules: users of GROUP may log in as USERs (none = any)",
    )
    create.add_argument(
        "--recording",
        choices=["off", "best_effort", "required"],
        help="ssh rules: record sessions (required: no session without its recording)",
    )
    for flag, what in (
        ("--idle-timeout", "end sessions idle (no input or output) this long"),
        ("--max-session", "end sessions this long"),
        ("--check-period", "refuse logins older than this (re-authenticate)"),
    ):
        create.add_argument(
            flag, type=cmd.parse_duration, metavar="DURATION", help=f"ssh rules: {what}"
        )
    create.add_argument("--record-input", action="store_true", help="record keystrokes too")
    create.add_argument("--record-exec", action="store_true", help="record non-PTY commands")
    create.add_argument("--disabled", action="store_true", help="create it switched off")
    create.add_argument("--file", help="a JSON policy body (as POST /api/v1/policies)")
    _leaf(policies, "rm", "remove a policy", cmd.policies_rm).add_argument("id")
    for action in ("enable", "disable"):
        switch = _leaf(policies, action, f"{action} a policy", cmd.policies_switch)
        switch.set_defaults(action=action)
        switch.add_argument("id")


def _setup_keys(sub: Any) -> None:
    keys = _group(sub, "setup-keys", "list, create, revoke setup keys", cmd.keys_ls)
    _leaf(keys, "ls", "list setup keys (never their values)", cmd.keys_ls)
    create = _leaf(keys, "create", "create a setup key (its value is shown once)", cmd.keys_create)
    create.add_argument("name")
    create.add_argument("--one-off", action="store_true", help="usable once")
    create.add_argument(
        "--expires-in",
        type=cmd.parse_duration,
        default=30 * 86400,
        metavar="DURATION",
        help="30d, 12h, 90m or never (default 30d)",
    )
    create.add_argument("--usage-limit", type=int, default=0, help="0 = unlimited")
    create.add_argument("--auto-group", action="append", default=[], help="group peers join")
    create.add_argument("--ssh-enabled", action="store_true", help="peers start with SSH on")
    create.add_argument(
        "--gateway", action="store_true", help="peers are browser-terminal gateways (issue 20)"
    )
    _leaf(keys, "revoke", "revoke a setup key", cmd.keys_revoke).add_argument("id")
    _leaf(keys, "rm", "remove a setup key", cmd.keys_rm).add_argument("id")


def _bus(sub: Any) -> None:
    bus = _group(sub, "bus", "NATS identities: revoke a key, list revoked keys", cmd.bus_ls)
    _leaf(bus, "ls", "revoked NATS user keys (when, and until when kept)", cmd.bus_ls)
    revoke = _leaf(
        bus,
        "revoke",
        "revoke a NATS user key: its connections close, its JWTs are refused",
        cmd.bus_revoke,
    )
    revoke.add_argument("key", help="the user public key (U...), e.g. printed by init --rotate")


def _sessions(sub: Any) -> None:
    sessions = _group(sub, "sessions", "recorded SSH sessions: list, play, export", sessions_ls)
    _leaf(sessions, "ls", "recorded sessions, newest first", sessions_ls)
    play = _leaf(sessions, "play", "replay a recorded session on this terminal", sessions_play)
    play.add_argument("id", help="the session id (meshctl sessions ls)")
    play.add_argument("--speed", type=float, default=1.0, help="times faster (default 1)")
    play.add_argument(
        "--idle-limit", type=float, default=0.0, help="cut pauses to this many seconds"
    )
    play.set_defaults(raw_output=True)
    export = _leaf(
        sessions, "export", "write a recording (asciicast v2) to stdout", sessions_export
    )
    export.add_argument("id", help="the session id (meshctl sessions ls)")
    export.set_defaults(raw_output=True)


def build_parser() -> argparse.ArgumentParser:
    """The top-level ``meshctl`` parser."""
    parser = _Parser(prog="meshctl", description="meshssh operator CLI", parents=[_common()])
    parser.add_argument("--version", action="version", version=f"meshctl {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _peers(sub)
    _users(sub)
    _groups(sub)
    _policies(sub)
    _setup_keys(sub)
    _bus(sub)
    _sessions(sub)
    _leaf(sub, "status", "the API replica's state", cmd.status)
    log = _leaf(sub, "audit", "the audit log, newest first (admin changes, SSH events)", audit)
    log.add_argument("--user", default="", help="a user id (JWT user or dashboard user)")
    log.add_argument("--peer", default="", help="peer id or name")
    log.add_argument("--kind", default="", help="admin-change, session-start, auth-rejected...")
    log.add_argument("--limit", type=int, default=50, help="events a page (1-500)")
    log.add_argument("--before", type=int, default=0, help="older than this sequence")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshctl``; returns the process exit code (1 on failure, 2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        url, token = resolve_settings(getattr(args, "api", None), getattr(args, "token", None))
        api = AdminApi(url, token)
        try:
            data, text = args.handler(args, api)
        finally:
            api.close()
    except AdminError as e:
        sys.stderr.write(f"meshctl: {e}\n")
        return 1
    if getattr(args, "raw_output", False):
        return 0  # the handler wrote its output (a recording) itself
    out = json.dumps(data, indent=2) if getattr(args, "json", False) else text
    sys.stdout.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
