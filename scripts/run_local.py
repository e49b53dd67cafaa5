"""`make run`: the whole system locally on embedded defaults (SPEC §10), then the commands to try.

Starts, each as its own process, stopped in reverse order on Ctrl-C or SIGTERM:

1. nats-server with JetStream (store in .run/nats);
2. meshssh-authn with its embedded OIDC provider and the demo users alice and bob (passwords
   generated once, kept in .run/demo-passwords.json, mode 0600);
3. meshssh-policy with the demo seed (setup keys, groups `servers` and `users`, a policy that
   lets users reach servers on TCP 22) on the loopback mesh 127.0.0.0/8;
4. two peers: `demo-server` on 127.0.0.2 (`--allow-server-ssh --enable-ssh-sftp` and local
   forwarding; `--enable-ssh-root` only when the demo runs as root, because logins go to the
   account running the demo) and `demo-laptop` on 127.0.0.3, the user's own peer.

It writes .run/endpoints.json and an ssh_config that includes the drop-in of demo-laptop (which
its agent keeps current in .run; demo-server keeps none, and nothing touches /etc/ssh or
~/.ssh), and prints the exact commands. State persists across runs; `make clean` removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from meshssh_testkit import NatsServer, ServiceProcess, script
from meshssh_testkit.process import terminate

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"
API = "127.0.0.1:8080"
PROVIDER = "127.0.0.1:8081"
SEED = ROOT / "services/policy/demo/seed.json"
USERS = ("alice", "bob")
IS_ROOT = os.geteuid() == 0
DROPIN = RUN / "ssh_config.d" / "meshssh.conf"  # demo-laptop's agent keeps it current
RELAY_PORT = 22 if IS_ROOT else 2222
PEERS = {
    "demo-server": {
        "mesh_ip": "127.0.0.2",
        "setup_key": "meshssh-demo-server-key-0001",
        "flags": ["--allow-server-ssh", "--enable-ssh-sftp", "--enable-ssh-local-port-forwarding",
                  "--enable-ssh-agent-forwarding", *(["--enable-ssh-root"] if IS_ROOT else []),
                  "--disable-ssh-config"],
    },
    "demo-laptop": {
        "mesh_ip": "127.0.0.3",
        "setup_key": "meshssh-demo-laptop-key-0001",
        "flags": ["--ssh-jwt-cache-ttl", "600", "--ssh-config-file", str(DROPIN)],
    },
}  # fmt: skip


def secret_file(path: Path, make: str) -> str:
    """Read a secret kept in .run, creating it (mode 0600) on the first run."""
    if not path.exists():
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def demo_passwords(users_file: Path) -> dict[str, str]:
    """Create the demo users once (generated passwords), and return their passwords."""
    store = RUN / "demo-passwords.json"
    passwords: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    for user in USERS:
        if user in passwords and users_file.exists() and user in users_file.read_text():
            continue
        out = subprocess.run(
            [script("meshssh-authn"), "users", "add", user, "--generate-password", "--replace",
             "--email", f"{user}@example.com", "--name", f"{user.title()} Demo",
             "--group", "users", "--users-file", str(users_file)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        passwords[user] = out.stdout.strip().splitlines()[-1]
    store.write_text(json.dumps(passwords, indent=2) + "\n")
    store.chmod(0o600)
    return passwords


async def wait_http(url: str, timeout: float = 30) -> None:
    """Wait until ``url`` answers 200."""
    async with asyncio.timeout(timeout), httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.2)


async def start_peer(name: str, nats_url: str) -> asyncio.subprocess.Process:
    """Start one demo peer's agent in the foreground (its own session) and wait for it."""
    peer = PEERS[name]
    state = RUN / "peers" / name
    state.mkdir(parents=True, exist_ok=True)
    log = (RUN / f"{name}.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        script("meshssh"), "up", "--foreground", *peer["flags"],
        "--mesh-ip", str(peer["mesh_ip"]), "--name", name, "--setup-key", str(peer["setup_key"]),
        "--management-url", f"http://{API}", "--nats-url", nats_url, "--state-dir", str(state),
        "--relay-port", str(RELAY_PORT), "--relay-mode", "proxy",
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    async with asyncio.timeout(60):
        while True:
            status = await asyncio.create_subprocess_exec(
                script("meshssh"), "status", "--state-dir", str(state),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await status.wait() == 0:
                return proc
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}; see {RUN / (name + '.log')}")
            await asyncio.sleep(0.3)


def ssh_config(laptop_state: Path) -> Path:
    """An ssh_config for the demo that includes demo-laptop's drop-in."""
    dropin = DROPIN
    subprocess.run(
        [script("meshssh"), "config", "install", "--file", str(dropin),
         "--state-dir", str(laptop_state)],
        check=True, timeout=60,
    )  # fmt: skip
    config = RUN / "ssh_config"
    config.write_text(f"Include {dropin}\n")
    return config


def print_guide(nats_url: str, ops: dict[str, str], passwords: dict[str, str], cfg: Path) -> None:
    """Print where everything listens and the exact commands to try."""
    laptop = RUN / "peers" / "demo-laptop"
    user = getpass.getuser()
    meshssh = script("meshssh")
    print(f"""
meshssh is running (state in {RUN}; endpoints in {RUN / "endpoints.json"})
  nats-server       {nats_url}
  API and dashboard http://{API}/  (OpenAPI docs at http://{API}/docs)
  OIDC provider     http://{PROVIDER}/.well-known/openid-configuration
  metrics           {"  ".join(f"{k} {v}/metrics" for k, v in ops.items())}
  demo users        {"  ".join(f"{u} / {p}" for u, p in passwords.items())}
  peers             demo-server 127.0.0.2 (relay :{RELAY_PORT}, sshd :22022), demo-laptop 127.0.0.3

1. Log in as alice (open the URL, enter the code, alice's password):
   {meshssh} login --state-dir {laptop} --no-browser
2. Then, from demo-laptop to demo-server, as the local account {user}:
   ssh -F {cfg} {user}@demo-server 'id; hostname'
   echo hello > /tmp/meshssh-demo.txt
   scp -F {cfg} /tmp/meshssh-demo.txt {user}@demo-server:/tmp/meshssh-demo-copy.txt
   sftp -F {cfg} {user}@demo-server
   {meshssh} ssh --state-dir {laptop} {user}@demo-server uptime
Press Ctrl-C to stop everything.""")
    sys.stdout.flush()


async def main() -> int:
    """Start everything, print the guide, and stop it all on a signal."""
    RUN.mkdir(exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    admin_token = secret_file(RUN / "admin-token", secrets.token_urlsafe(24))
    users_file = RUN / "users.json"
    passwords = demo_passwords(users_file)
    nats = await NatsServer.start(RUN / "nats")
    services: list[ServiceProcess] = []
    peers: list[asyncio.subprocess.Process] = []
    try:
        authn = await ServiceProcess.start(
            "meshssh-authn", "--nats-url", nats.url, "--listen", PROVIDER,
            "--users-file", str(users_file), "--log-format", "json",
        )  # fmt: skip
        services.append(authn)
        policy = await ServiceProcess.start(
            "meshssh-policy", "--nats-url", nats.url, "--listen", API, "--seed", str(SEED),
            "--mesh-prefix", "127.0.0.0/8", "--log-format", "json",
            env={"MESHSSH_ADMIN_TOKEN": admin_token},
        )  # fmt: skip
        services.append(policy)
        for proc in services:
            await proc.wait_ready(timeout=60)
        await wait_http(f"http://{API}/api/v1/auth/config")  # authn published its keys
        for name in PEERS:
            peers.append(await start_peer(name, nats.url))
        cfg = ssh_config(RUN / "peers" / "demo-laptop")
        ops = {p.name.removeprefix("meshssh-"): p.ops_url for p in services}
        endpoints = {
            "nats_url": nats.url,
            "api_url": f"http://{API}",
            "provider_url": f"http://{PROVIDER}",
            "ops": ops,
            "admin_token": admin_token,
            "setup_key": PEERS["demo-laptop"]["setup_key"],
            "setup_keys": {name: peer["setup_key"] for name, peer in PEERS.items()},
            "users": passwords,
            "ssh_config": str(cfg),
            "peers": {
                name: {"name": name, "mesh_ip": peer["mesh_ip"], "relay_port": RELAY_PORT,
                       "ssh_port": 22022, "state_dir": str(RUN / "peers" / name)}
                for name, peer in PEERS.items()
            },
        }  # fmt: skip
        (RUN / "endpoints.json").write_text(json.dumps(endpoints, indent=2) + "\n")
        (RUN / "endpoints.json").chmod(0o600)
        print_guide(nats.url, ops, passwords, cfg)
        await stop.wait()
    finally:
        print("stopping...", file=sys.stderr)
        for agent in reversed(peers):
            await terminate(agent, 15)
        for proc in reversed(services):
            code = await proc.stop()
            if code not in (0, -signal.SIGTERM):
                print(f"{proc.name} exited {code}:\n{proc.output()}", file=sys.stderr)
        await nats.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
