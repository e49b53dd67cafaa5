"""``meshssh status [-d]``: what the local agent is doing.

Always: the peer, the management link, the SSH server and relay state and mode, the features.
With ``-d``: the supervised children, the remote peers with their SSH state as the map says
(peers do not hear each other, so whether one is up right now is shown only when the agent
knows it), and the live SSH sessions on this peer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import msgspec

from meshssh_agent.state_dir import default_state_dir
from meshssh_cli.link.client import AgentClient
from meshssh_common.errors import MeshError
from meshssh_common.wire.agent import AgentStatus

__all__ = ["format_status", "register", "run"]

_FLAG_NAMES = [
    ("local_port_forwarding", "local-port-forwarding"),
    ("remote_port_forwarding", "remote-port-forwarding"),
    ("sftp", "sftp"),
    ("root_login", "root"),
    ("disable_ssh_auth", "no-auth"),
    ("agent_forwarding", "agent-forwarding"),
    ("accept_idp_tokens", "idp-tokens"),
]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the ``meshssh`` parser."""
    p = subparsers.add_parser(
        "status", help="show this peer's state", description="Show the local agent's state."
    )
    p.add_argument("-d", "--detail", action="store_true", help="peers, sessions and children")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"the agent's state dir (default: {default_state_dir()})",
    )
    p.set_defaults(run=run)


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def format_status(s: AgentStatus, *, detail: bool) -> str:
    """The human-readable status text."""
    lines = [f"Peer:        {s.name} ({s.peer_id or 'not registered'}), mesh address {s.mesh_ip}"]
    link = "connected" if s.nats_connected else "disconnected"
    if s.nats_url:  # another local user's status has none (the bus is not theirs to reach)
        link += f" ({s.nats_url})"
    if s.registered:
        lines.append(f"Management:  {link}, map serial {s.serial}")
    else:  # registration is REST: the bus comes after it (the peer has no NATS identity yet)
        lines.append(f"Management:  registering: {s.register_error or 'starting'}; bus not yet")
    ssh = f"running on {s.mesh_ip}:{s.ssh_port}" if s.ssh_running else "not running"
    lines.append(
        f"SSH server:  {ssh} (local --allow-server-ssh {_onoff(s.flags.server_ssh_allowed)}, "
        f"management {_onoff(s.ssh_enabled)})"
    )
    mode = f"{s.relay_mode} ({s.relay_mode_reason})"
    where = f"on {s.mesh_ip}:{s.relay_port}" if s.relay_running else "not running"
    lines.append(f"Relay:       {mode}, {where}")
    if s.native_upstream:
        lines.append(f"Native SSH:  {s.native_upstream} (while SSH is off)")
    enabled = [name for attr, name in _FLAG_NAMES if getattr(s.flags, attr)]
    lines.append(f"Features:    {', '.join(enabled) or 'none'}; JWT cache {s.flags.jwt_cache_ttl}s")
    if s.flags.local_port_forwarding and s.flags.permit_open != ("any",):
        lines.append(f"Permit open: {' '.join(s.flags.permit_open)}")
    if not detail:
        return "\n".join(lines)
    lines.append(f"Agent:       pid {s.pid}, ops {s.ops_url or '-'}")
    lines.append("Children:")
    for c in s.children:
        extra = f", last error: {c.last_error}" if c.last_error and c.state != "running" else ""
        lines.append(
            f"  {c.name:<6} {c.state:<9} pid {c.pid or '-':<8} restarts {c.restarts}{extra}"
        )
    lines.append(f"Peers ({len(s.peers)}):")
    for p in s.peers:
        online = {True: " online", False: " offline", None: ""}[p.online]
        lines.append(f"  {p.name:<20} {p.mesh_ip:<16} ssh {_onoff(p.ssh_enabled)}{online}")
    lines.append(f"Sessions ({len(s.sessions)}):")
    for x in s.sessions:
        since = time.strftime("%H:%M:%S", time.localtime(x.started_at)) if x.started_at else "?"
        who = f"{x.local_user} (jwt {x.jwt_user})" if x.jwt_user else x.local_user
        fwd = f", forwards {', '.join(x.forwards)}" if x.forwards else ""
        lines.append(f"  {who} from {x.source or '?'} since {since}: {x.command or 'shell'}{fwd}")
    return "\n".join(lines)


async def _status(state_dir: Path, detail: bool) -> AgentStatus:
    async with AgentClient.connect(state_dir) as agent:
        return await agent.status(detail=detail)


def run(args: argparse.Namespace) -> int:
    """``meshssh status``; returns the exit code (1 when no agent runs)."""
    state_dir = (args.state_dir or default_state_dir()).absolute()
    try:
        status = asyncio.run(_status(state_dir, args.detail))
    except MeshError as e:
        sys.stderr.write(f"meshssh status: {e.public} (start it with `meshssh up`)\n")
        return 1
    if args.json:
        sys.stdout.write(msgspec.json.encode(status).decode() + "\n")
    else:
        sys.stdout.write(format_status(status, detail=args.detail) + "\n")
    return 0
