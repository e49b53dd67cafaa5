"""``meshssh up``: start the peer agent ``meshssh-agent`` (daemonized, or with ``--foreground``).

Without ``--foreground`` the command starts ``meshssh-agent`` as a background process (log in
``<state-dir>/agent.log``) and returns once it is registered and serving its socket; if the
agent exits or does not register within ``--wait`` seconds, the command reports why, leaves
nothing running, and exits non-zero. With ``--foreground`` this process becomes the agent
(``exec``). If an agent already runs for the state dir, ``up`` hands it the new local flags
instead (they are reported to management as metadata).

The agent registers over REST (``--management-url``) and gets its NATS credentials there
(``<state-dir>/nats.creds``); a ``--nats-creds`` given to ``up`` is handed on and ignored
by the agent, with a warning.

The agent's settings carry the same flag names as ``up`` (``meshssh_agent.settings``), so
``up`` hands them on unchanged and the agent validates them. The setup key comes from
``MESHSSH_SETUP_KEY`` or ``--setup-key-file``; ``--setup-key KEY`` still works but warns, as
``ps`` shows it to every local user. The agent gets the key in its environment (which only
its own user can read, and which it scrubs at once), never on its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from meshssh_agent.children import service_executable
from meshssh_agent.settings import AgentSettings
from meshssh_agent.state_dir import StateDir, default_state_dir, lock_holder, prepare_state_dir
from meshssh_cli.link.client import AgentClient
from meshssh_common.errors import ConfigError, MeshError
from meshssh_common.registration import SETUP_KEY_ENV
from meshssh_common.settings import parse_settings

__all__ = ["agent_argv", "register", "run"]

# `up`-only options, and `up` options the agent spells differently.
_UP_ONLY = {"help", "setup_key", "foreground", "wait"}
_RENAMED = {"agent_ops_listen": "--ops-listen"}

_SSH_FLAGS = [
    ("--allow-server-ssh", "allow this peer to run the SSH server"),
    ("--enable-ssh-local-port-forwarding", "accept direct-tcpip channels (-L, -D)"),
    ("--enable-ssh-remote-port-forwarding", "accept tcpip-forward requests (-R)"),
    ("--enable-ssh-sftp", "serve the sftp subsystem (scp uses it too)"),
    ("--enable-ssh-root", "allow login as root"),
    ("--disable-ssh-auth", "no JWT: machine identity, network ACL only"),
    ("--enable-ssh-agent-forwarding", "accept ssh -A: sessions get an agent socket"),
    (
        "--accept-idp-tokens",
        "also accept the identity provider's own token, besides per-peer tokens",
    ),
]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``up`` to the ``meshssh`` parser."""
    p = subparsers.add_parser(
        "up",
        help="start this peer's agent",
        description="Start this peer's agent; return once it is registered.",
    )
    for flag, text in _SSH_FLAGS:
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument(
        "--ssh-jwt-cache-ttl",
        type=int,
        default=0,
        metavar="SECONDS",
        help="cache each local user's JWT this long (0: never)",
    )
    p.add_argument(
        "--ssh-permit-open",
        action="append",
        default=[],
        metavar="SPEC",
        help="where -L/-D may connect, in OpenSSH PermitOpen syntax: HOST:PORT, [V6]:PORT, "
        "*:PORT, HOST:*, any (default) or none; repeatable",
    )
    p.add_argument(
        "--management-url",
        default=os.environ.get("MESHSSH_MANAGEMENT_URL", ""),
        help="the management REST API [env MESHSSH_MANAGEMENT_URL]",
    )
    p.add_argument(
        "--nats-url",
        default=os.environ.get("MESHSSH_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server URL(s) [env MESHSSH_NATS_URL]",
    )
    p.add_argument(  # the agent ignores it (and says so): its identity comes from registration
        "--nats-creds", type=Path, default=None, help=argparse.SUPPRESS
    )
    p.add_argument(
        "--nats-ca",
        type=Path,
        default=os.environ.get("MESHSSH_NATS_CA"),
        help="CA certificate that signed the NATS server's TLS certificate [env MESHSSH_NATS_CA]"
        " (the peer's NATS credentials come from registration: <state-dir>/nats.creds)",
    )
    p.add_argument(
        "--setup-key",
        default="",
        help="one-time setup key (deprecated: ps shows it; use the env variable or a file) "
        "[env MESHSSH_SETUP_KEY]",
    )
    p.add_argument(
        "--setup-key-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="a file holding the one-time setup key for the first registration",
    )
    p.add_argument("--mesh-ip", required=True, help="this peer's mesh address")
    p.add_argument("--name", default=None, help="peer name (default: the host name)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"host key, credential, NATS identity, socket (default: {default_state_dir()})",
    )
    p.add_argument("--ssh-port", type=int, default=22022, help="meshssh-sshd's port (0: pick)")
    p.add_argument("--relay-port", type=int, default=22, help="the port clients dial (0: pick)")
    p.add_argument(
        "--relay-mode",
        choices=["auto", "proxy", "nftables"],
        default="auto",
        help="auto: nftables where it can run (root, nft, a real interface)",
    )
    p.add_argument(
        "--native-upstream",
        default="",
        metavar="HOST:PORT",
        help="a native SSH daemon for port-22 connections while SSH is off",
    )
    p.add_argument(
        "--sshd-ops-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="meshssh-sshd's /metrics and /readyz (port 0: pick one)",
    )
    p.add_argument(
        "--relay-ops-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="meshssh-relay's /metrics and /readyz (port 0: pick one)",
    )
    p.add_argument(
        "--agent-ops-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="meshssh-agent's /healthz, /readyz and /metrics (port 0: pick one)",
    )
    p.add_argument(
        "--ssh-config-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="the OpenSSH drop-in this agent keeps current (default: "
        "/etc/ssh/ssh_config.d/99-meshssh.conf as root, else ~/.ssh/meshssh.conf)",
    )
    p.add_argument(
        "--disable-ssh-config",
        action="store_true",
        help="keep no OpenSSH drop-in [env MESHSSH_DISABLE_SSH_CONFIG=1]",
    )
    p.add_argument("--foreground", action="store_true", help="run in this process")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for registration when daemonizing",
    )
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--child-stop-timeout", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--sshd-bin", default="", help=argparse.SUPPRESS)
    p.add_argument("--relay-bin", default="", help=argparse.SUPPRESS)
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="INFO")
    p.add_argument("--log-format", choices=["json", "text"], default="text")
    p.set_defaults(run=run, up_parser=p)


def agent_argv(args: argparse.Namespace) -> list[str]:
    """meshssh-agent's arguments for parsed ``up`` arguments (never the setup key)."""
    out: list[str] = []
    for action in args.up_parser._actions:
        if not action.option_strings or action.dest in _UP_ONLY:
            continue
        flag = _RENAMED.get(action.dest, action.option_strings[0])
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                out.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value or ():
                out += [flag, str(item)]
        elif isinstance(value, Path):
            out += [flag, str(value.absolute())]
        elif value not in (None, ""):
            out += [flag, str(value)]
    if args.state_dir is None:
        out += ["--state-dir", str(default_state_dir())]
    return out


def _setup_key(args: argparse.Namespace) -> str:
    if args.setup_key:
        sys.stderr.write(
            "meshssh up: warning: --setup-key puts the key where every local user can see it "
            f"(ps); use {SETUP_KEY_ENV} or --setup-key-file\n"
        )
        return str(args.setup_key)
    return os.environ.get(SETUP_KEY_ENV, "")


def run(args: argparse.Namespace) -> int:
    """``meshssh up``; returns the exit code."""
    argv = agent_argv(args)
    try:
        settings = parse_settings(AgentSettings, argv, prog="meshssh up")
    except ConfigError as e:
        sys.stderr.write(f"meshssh up: {e}\n")
        return 2
    files = settings.files
    if lock_holder(files.lock) is not None:
        return asyncio.run(_reconfigure(settings))
    env = {k: v for k, v in os.environ.items() if k != SETUP_KEY_ENV}
    if key := _setup_key(args):
        env[SETUP_KEY_ENV] = key
    command = _agent_command()
    if args.foreground:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(command[0], [*command, *argv], env)
    return _launch(files, [*command, *argv], env, args.wait)


def _agent_command() -> list[str]:
    exe = service_executable("meshssh-agent")
    if os.path.isabs(exe):
        return [exe]
    return [sys.executable, "-m", "meshssh_agent"]  # not installed as a program: the module


async def _reconfigure(settings: AgentSettings) -> int:
    try:
        async with AgentClient.connect(settings.state_dir) as agent:
            message = await agent.configure(settings.flags)
    except MeshError as e:
        sys.stderr.write(f"meshssh up: an agent runs for {settings.state_dir}; {e.public}\n")
        return 1
    sys.stderr.write(f"meshssh up: agent already running; {message}\n")
    return 0


def _launch(files: StateDir, argv: list[str], env: dict[str, str], wait: float) -> int:
    try:
        prepare_state_dir(files.path)
    except ConfigError as e:
        sys.stderr.write(f"meshssh up: {e}\n")
        return 2
    fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    offset = os.lseek(fd, 0, os.SEEK_END)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    return asyncio.run(_await_registration(files, proc, offset, wait))


_CHILDREN_WAIT = 10.0


async def _report_children(files: StateDir, deadline: float) -> None:
    """Wait a little for the children the agent wants; say why one does not come up."""
    while time.monotonic() < deadline:
        try:
            async with AgentClient.connect(files.path, timeout=1) as agent:
                status = await agent.status()
        except MeshError:
            return
        wanted = [c for c in status.children if c.wanted]
        failing = [c for c in wanted if c.restarts and c.last_error]
        if failing:
            for child in failing:
                sys.stderr.write(
                    f"meshssh up: warning: {child.name} keeps failing (the agent retries): "
                    f"{child.last_error}\n"
                )
            return
        if all(c.state == "running" for c in wanted):
            return
        await asyncio.sleep(0.2)


async def _await_registration(
    files: StateDir, proc: subprocess.Popen[bytes], offset: int, wait: float
) -> int:
    deadline = time.monotonic() + wait
    last = ""
    while time.monotonic() < deadline:
        if (code := proc.poll()) is not None:
            tail = files.log.read_text(errors="replace")[offset:].strip().splitlines()
            # The agent's own one-line reasons ("meshssh-agent: bad setting ...") say it best.
            reasons = [line for line in tail if line.startswith("meshssh-agent:")]
            sys.stderr.write("\n".join(reasons or tail[-15:]) + "\n")
            sys.stderr.write(f"meshssh up: the agent exited ({code}); log: {files.log}\n")
            return code or 1
        try:
            async with AgentClient.connect(files.path, timeout=1) as agent:
                status = await agent.status()
        except MeshError:  # not serving yet, or going away: poll() above tells which
            await asyncio.sleep(0.1)
            continue
        if status.registered:
            sys.stdout.write(
                f"meshssh: {status.name} is up as {status.peer_id} on {status.mesh_ip} "
                f"(pid {status.pid}; relay: {status.relay_mode}; log: {files.log})\n"
            )
            await _report_children(files, min(deadline, time.monotonic() + _CHILDREN_WAIT))
            return 0
        last = status.register_error or "registering"
        await asyncio.sleep(0.1)
    sys.stderr.write(f"meshssh up: not registered after {wait:.0f}s ({last}); stopping\n")
    try:
        async with AgentClient.connect(files.path) as agent:
            await agent.down()
    except MeshError:
        proc.terminate()
    try:
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 15)
    except TimeoutError:
        proc.kill()
    return 1
