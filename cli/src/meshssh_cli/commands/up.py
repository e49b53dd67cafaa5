"""``meshssh up``: start the peer agent (daemonized, or in the foreground with ``--foreground``).

Without ``--foreground`` the command starts the agent as a background process (log in
``<state-dir>/agent.log``) and returns once it is registered and serving its socket; if the
agent exits or does not register within ``--wait`` seconds, the command reports why, leaves
nothing running, and exits non-zero. If an agent already runs for the state dir, ``up`` hands
it the new local flags instead (they are reported to management as metadata).

The setup key can come from ``MESHSSH_SETUP_KEY`` (kept off the command line of the daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from meshssh_agent.settings import AgentConfig, Flags, default_name, default_state_dir
from meshssh_agent.state_dir import lock_holder, prepare_state_dir
from meshssh_cli.link.client import AgentClient
from meshssh_common.errors import ConfigError, MeshError
from meshssh_common.logs import configure_logging, service_logger

__all__ = ["config_from_args", "register", "run"]

_SSH_FLAGS = [
    ("--allow-server-ssh", "allow this peer to run the SSH server"),
    ("--enable-ssh-local-port-forwarding", "accept direct-tcpip channels (-L, -D)"),
    ("--enable-ssh-remote-port-forwarding", "accept tcpip-forward requests (-R)"),
    ("--enable-ssh-sftp", "serve the sftp subsystem (scp uses it too)"),
    ("--enable-ssh-root", "allow login as root"),
    ("--disable-ssh-auth", "no JWT: machine identity, network ACL only"),
    ("--enable-ssh-agent-forwarding", "accept ssh -A: sessions get an agent socket"),
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
        "--management-url",
        default=os.environ.get("MESHSSH_MANAGEMENT_URL", ""),
        help="the management REST API [env MESHSSH_MANAGEMENT_URL]",
    )
    p.add_argument(
        "--nats-url",
        default=os.environ.get("MESHSSH_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server URL(s) [env MESHSSH_NATS_URL]",
    )
    p.add_argument(
        "--nats-creds",
        type=Path,
        default=os.environ.get("MESHSSH_NATS_CREDS"),
        help="NATS credentials file [env MESHSSH_NATS_CREDS]",
    )
    p.add_argument(
        "--setup-key",
        default=os.environ.get("MESHSSH_SETUP_KEY", ""),
        help="one-time setup key for the first registration [env MESHSSH_SETUP_KEY]",
    )
    p.add_argument("--mesh-ip", required=True, help="this peer's mesh address")
    p.add_argument("--name", default=None, help="peer name (default: the host name)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"host key, credential, socket (default: {default_state_dir()})",
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
    p.set_defaults(run=run, up_parser=p)  # fmt: skip


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The agent's settings from parsed ``up`` arguments.

    Raises:
        ConfigError: a value is invalid (the message names the flag).
    """
    flags = Flags(
        allow_server_ssh=args.allow_server_ssh,
        local_port_forwarding=args.enable_ssh_local_port_forwarding,
        remote_port_forwarding=args.enable_ssh_remote_port_forwarding,
        sftp=args.enable_ssh_sftp,
        root_login=args.enable_ssh_root,
        disable_ssh_auth=args.disable_ssh_auth,
        jwt_cache_ttl=args.ssh_jwt_cache_ttl,
        agent_forwarding=args.enable_ssh_agent_forwarding,
    )
    if args.ssh_jwt_cache_ttl < 0:
        raise ConfigError("--ssh-jwt-cache-ttl", "must be 0 or more seconds")
    return AgentConfig(
        state_dir=(args.state_dir or default_state_dir()).absolute(),
        mesh_ip=args.mesh_ip,
        name=args.name or default_name(),
        nats_url=args.nats_url,
        nats_creds=Path(args.nats_creds) if args.nats_creds else None,
        management_url=args.management_url,
        setup_key=args.setup_key,
        flags=flags,
        ssh_port=args.ssh_port,
        relay_port=args.relay_port,
        relay_mode=args.relay_mode,
        native_upstream=args.native_upstream,
        heartbeat_interval=args.heartbeat_interval,
        child_stop_timeout=args.child_stop_timeout,
        sshd_bin=args.sshd_bin,
        relay_bin=args.relay_bin,
        log_level=args.log_level,
        log_format=args.log_format,
        sshd_ops_listen=args.sshd_ops_listen,
        relay_ops_listen=args.relay_ops_listen,
        ssh_config_file=args.ssh_config_file.absolute() if args.ssh_config_file else None,
        disable_ssh_config=args.disable_ssh_config,
    )


def run(args: argparse.Namespace) -> int:
    """``meshssh up``; returns the exit code."""
    try:
        config = config_from_args(args)
    except ConfigError as e:
        sys.stderr.write(f"meshssh up: {e}\n")
        return 2
    if lock_holder(config.lock_path) is not None:
        return asyncio.run(_reconfigure(config))
    if args.foreground:
        from meshssh_agent.agent import Agent  # only the agent itself needs NATS and the rest

        configure_logging(config.log_level, config.log_format)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe
        try:
            agent = Agent(config, log=service_logger("agent", config.name))
        except ConfigError as e:
            sys.stderr.write(f"meshssh up: {e}\n")
            return 2
        return asyncio.run(agent.run())
    return _launch(config, _argv(args), args.wait)


def _argv(args: argparse.Namespace) -> list[str]:
    """``up`` arguments that reproduce ``args`` (for the daemon), without the setup key."""
    out = ["up"]
    for action in args.up_parser._actions:
        if not action.option_strings or action.dest in ("help", "setup_key", "foreground"):
            continue
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                out.append(action.option_strings[0])
        elif value not in (None, ""):
            out += [action.option_strings[0], str(value)]
    return out


async def _reconfigure(config: AgentConfig) -> int:
    try:
        async with AgentClient.connect(config.state_dir) as agent:
            message = await agent.configure(config.flags.wire())
    except MeshError as e:
        sys.stderr.write(f"meshssh up: an agent runs for {config.state_dir}; {e.public}\n")
        return 1
    sys.stderr.write(f"meshssh up: agent already running; {message}\n")
    return 0


def _launch(config: AgentConfig, argv: list[str], wait: float) -> int:
    try:
        prepare_state_dir(config.state_dir)
    except ConfigError as e:
        sys.stderr.write(f"meshssh up: {e}\n")
        return 2
    child_argv = [sys.executable, "-m", "meshssh_cli.main", *argv, "--foreground"]
    env = dict(os.environ)
    if config.setup_key:
        env["MESHSSH_SETUP_KEY"] = config.setup_key
    fd = os.open(config.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    offset = os.lseek(fd, 0, os.SEEK_END)
    try:
        proc = subprocess.Popen(
            child_argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
            start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(fd)
    return asyncio.run(_await_registration(config, proc, offset, wait))


_CHILDREN_WAIT = 10.0


async def _report_children(config: AgentConfig, deadline: float) -> None:
    """Wait a little for the children the agent wants; say why one does not come up."""
    while time.monotonic() < deadline:
        try:
            async with AgentClient.connect(config.state_dir, timeout=1) as agent:
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
    config: AgentConfig, proc: subprocess.Popen[bytes], offset: int, wait: float
) -> int:
    deadline = time.monotonic() + wait
    last = ""
    while time.monotonic() < deadline:
        if (code := proc.poll()) is not None:
            tail = config.log_path.read_text(errors="replace")[offset:].strip().splitlines()
            sys.stderr.write("\n".join(tail[-15:]) + "\n")
            sys.stderr.write(f"meshssh up: the agent exited ({code}); log: {config.log_path}\n")
            return code or 1
        try:
            async with AgentClient.connect(config.state_dir, timeout=1) as agent:
                status = await agent.status()
        except MeshError:  # not serving yet, or going away: poll() above tells which
            await asyncio.sleep(0.1)
            continue
        if status.registered:
            sys.stdout.write(
                f"meshssh: {status.name} is up as {status.peer_id} on {status.mesh_ip} "
                f"(pid {status.pid}; relay: {status.relay_mode}; log: {config.log_path})\n"
            )
            await _report_children(config, min(deadline, time.monotonic() + _CHILDREN_WAIT))
            return 0
        last = status.register_error or "registering"
        await asyncio.sleep(0.1)
    sys.stderr.write(f"meshssh up: not registered after {wait:.0f}s ({last}); stopping\n")
    try:
        async with AgentClient.connect(config.state_dir) as agent:
            await agent.down()
    except MeshError:
        proc.terminate()
    try:
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 15)
    except TimeoutError:
        proc.kill()
    return 1
