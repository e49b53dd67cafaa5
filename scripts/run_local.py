"""`make run`: the whole system locally on embedded defaults (SPEC §10), then the commands to try.

Starts, each as its own process, stopped in reverse order on Ctrl-C, SIGTERM or SIGHUP (the
terminal closed), also while still starting:

1. nats-server with JetStream (store in <run>/nats) and authentication on: the bus keys are
   made once into <run>/bus (as `meshssh-policy init --dir <run>/bus` does), the server runs
   from their config on loopback (plaintext), and an anonymous client is refused; policy and
   authn connect with their own creds (`<run>/bus/policy.creds`, `authn.creds`), operators'
   scripts with `<run>/bus/admin.creds`; policy signs the peers' JWTs with them
   (`--bus-keys <run>/bus`), and each peer's agent connects with the identity it registered
   for (`<state-dir>/nats.creds`);
2. meshssh-authn with its embedded OIDC provider and the demo users alice and bob (passwords
   generated once, kept in <run>/demo-passwords.json, mode 0600);
3. meshssh-policy with the demo seed (setup keys, groups `servers` and `users`, a policy that
   lets users reach servers on TCP 22) on the loopback mesh 127.0.0.0/8; its dashboard signs
   users in at authn's embedded provider (authn registers `<API>/auth/callback` as the
   dashboard's redirect URI) and alice is its admin (`--admin-users alice`);
4. two peers: `demo-server` on 127.0.0.2 (`--allow-server-ssh --enable-ssh-sftp` and local
   forwarding; `--enable-ssh-root` only when the demo runs as root, because logins go to the
   account running the demo) and `demo-laptop` on 127.0.0.3, the user's own peer;
5. meshssh-gateway, the browser terminals' gateway, a peer of its own on 127.0.0.4
   (`demo-gateway`), registered with the setup key `meshssh-demo-gateway-key-0001` (kind
   `gateway`, group `users`; created over REST on the first run) and listening on
   127.0.0.1:8090 (`--gateway-listen`, env `MESHSSH_DEMO_GATEWAY_LISTEN`), which policy's
   `--gateway-url` names: the dashboard's Connect button opens terminals through it.

It writes <run>/endpoints.json (SPEC §11; each peer's agent, sshd and relay ops URLs) and an
ssh_config that includes the drop-in of demo-laptop (which its agent keeps current in <run>;
demo-server keeps none, and nothing touches /etc/ssh or ~/.ssh), and prints the exact commands.
State persists across runs; `make clean` removes it.

<run> is `.run` in the repository, or `--run-dir` / `MESHSSH_RUN_DIR`. The API and the provider
listen on 127.0.0.1:8080 and :8081 unless `--api-listen` / `--provider-listen` (env
`MESHSSH_DEMO_API_LISTEN`, `MESHSSH_DEMO_PROVIDER_LISTEN`) say otherwise (port 0: a free one).
The peers' addresses are fixed, so one demo runs per network namespace: the first holds the
abstract Unix socket `@meshssh-demo` (see `demo_lock.py`), and a second one says where the
first is instead of failing on a busy port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from demo_lock import DemoBusy, DemoLock, port_in_use

from meshssh_common.bus_keys import SIGNING_KEYS, BusKeys, make_signing_key
from meshssh_common.secret_files import write_secret_file
from meshssh_testkit import NatsServer, ServiceProcess, script
from meshssh_testkit.ports import free_port
from meshssh_testkit.process import terminate

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "services/policy/demo/seed.json"
USERS = ("alice", "bob")
IS_ROOT = os.geteuid() == 0
RELAY_PORT = 22 if IS_ROOT else 2222
SSH_PORT = 22022
GATEWAY_KEY = "meshssh-demo-gateway-key-0001"
PEERS = {
    "demo-server": {
        "mesh_ip": "127.0.0.2",
        "setup_key": "meshssh-demo-server-key-0001",
        "flags": [
            "--allow-server-ssh",
            "--enable-ssh-sftp",
            "--enable-ssh-local-port-forwarding",
            "--enable-ssh-agent-forwarding",
            *(["--enable-ssh-root"] if IS_ROOT else []),
            "--disable-ssh-config",
        ],
        "children": ["sshd", "relay"],  # the processes its agent runs (ops: these and "agent")
    },
    "demo-laptop": {
        "mesh_ip": "127.0.0.3",
        "setup_key": "meshssh-demo-laptop-key-0001",
        "flags": ["--ssh-jwt-cache-ttl", "600"],  # its drop-in path is added per run dir
        "children": [],
    },
}


def say(text: str, *, err: bool = False) -> None:
    """Print, ignoring a terminal that went away (SIGHUP: writes to it fail with EIO)."""
    with contextlib.suppress(OSError, ValueError):
        stream = sys.stderr if err else sys.stdout
        stream.write(text + "\n")
        stream.flush()


def free_listen(hostport: str) -> str:
    """``hostport`` with port 0 replaced by a port that is free now.

    The port comes from below the kernel's ephemeral range (``free_port``), so nothing else
    takes it between this pick and the service's bind.
    """
    host, _, port = hostport.rpartition(":")
    if port != "0":
        return hostport
    return f"{host}:{free_port(host)}"


@dataclass(frozen=True)
class Demo:
    """Where this demo keeps its state and listens."""

    run: Path
    api: str  # HOST:PORT of the REST API and dashboard
    provider: str  # HOST:PORT of the embedded OIDC provider
    gateway: str  # HOST:PORT of meshssh-gateway's WebSocket endpoint

    @property
    def dropin(self) -> Path:
        """demo-laptop's OpenSSH drop-in (its agent keeps it current)."""
        return self.run / "ssh_config.d" / "meshssh.conf"

    def state(self, peer: str) -> Path:
        """A demo peer's state dir."""
        return self.run / "peers" / peer


def secret_file(path: Path, make: str) -> str:
    """Read a secret kept in the run dir, creating it (mode 0600) on the first run."""
    if not path.exists():
        write_secret_file(path, make)
    return path.read_text().strip()


async def command(*argv: str, timeout: float = 60) -> str:
    """Run ``argv`` to completion (stopped if we are); returns stdout, raises on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        await terminate(proc, 5)  # no-op once it exited
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {err.decode()}")
    return out.decode()


async def demo_passwords(demo: Demo, users_file: Path) -> dict[str, str]:
    """Create the demo users once (generated passwords), and return their passwords."""
    store = demo.run / "demo-passwords.json"
    passwords: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    for user in USERS:
        if user in passwords and users_file.exists() and user in users_file.read_text():
            continue
        out = await command(
            script("meshssh-authn"),
            "users",
            "add",
            user,
            "--generate-password",
            "--replace",
            "--email",
            f"{user}@example.com",
            "--name",
            f"{user.title()} Demo",
            "--group",
            "users",
            "--users-file",
            str(users_file),
        )
        passwords[user] = out.strip().splitlines()[-1]
    write_secret_file(store, json.dumps(passwords, indent=2) + "\n")
    return passwords


async def wait_http(url: str, timeout: float = 30) -> None:
    """Wait until ``url`` answers 200."""
    async with asyncio.timeout(timeout), httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.2)


def bus_keys(directory: Path) -> BusKeys:
    """The demo's bus keys: made on the first run (``meshssh-policy init``), kept after."""
    if (directory / "operator.jwt").exists():
        for name in SIGNING_KEYS:  # a run directory made before signed maps
            if not (directory / f"{name}.pem").exists():
                make_signing_key(directory, name)
        return BusKeys.load(directory)
    return BusKeys.create(directory)


async def start_nats(store: Path, keys: BusKeys) -> NatsServer:
    """Start nats-server; a stop request while it starts waits for it, then stops it."""
    task = asyncio.ensure_future(NatsServer.start(store, keys=keys))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await (await task).stop()
        raise


async def start_peer(
    demo: Demo,
    name: str,
    nats: NatsServer,
    ops: dict[str, str],
    started: list[asyncio.subprocess.Process],
) -> None:
    """Start one demo peer's agent in the foreground (its own session) and wait for it.

    The process goes into ``started`` as soon as it exists, so a stop request during the
    wait still stops it. ``ops`` gives the fixed ops listener of the agent and of each child
    (stable across child restarts, so endpoints.json stays true). The setup key goes in the
    environment, never on a command line.
    """
    peer = PEERS[name]
    state = demo.state(name)
    state.mkdir(parents=True, exist_ok=True)
    extra = [f"--{proc}-ops-listen={ops[proc].removeprefix('http://')}" for proc in ops]
    if name == "demo-laptop":
        extra += ["--ssh-config-file", str(demo.dropin)]
    log = (demo.run / f"{name}.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        script("meshssh"),
        "up",
        "--foreground",
        *peer["flags"],
        *extra,
        "--mesh-ip",
        str(peer["mesh_ip"]),
        "--name",
        name,
        "--management-url",
        f"http://{demo.api}",
        "--nats-url",
        nats.url,
        "--state-dir",
        str(state),
        "--relay-port",
        str(RELAY_PORT),
        "--relay-mode",
        "proxy",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        # The agent registers over REST and connects with the identity it gets there
        # (<state-dir>/nats.creds): it needs no creds from here.
        env={**os.environ, "MESHSSH_SETUP_KEY": str(peer["setup_key"])},
    )
    log.close()
    started.append(proc)
    async with asyncio.timeout(60):
        while True:
            status = await asyncio.create_subprocess_exec(
                script("meshssh"),
                "status",
                "--state-dir",
                str(state),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await status.wait() == 0:
                break
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}; see {demo.run / name}.log")
            await asyncio.sleep(0.3)
        for url in ops.values():  # the agent's at once, the children once SSH is enabled
            await wait_http(f"{url}/healthz", timeout=60)


async def start_gateway(demo: Demo, nats: NatsServer, admin_token: str) -> ServiceProcess:
    """meshssh-gateway as peer ``demo-gateway``, once it registered and serves."""
    async with httpx.AsyncClient(timeout=10) as http:
        made = await http.post(
            f"http://{demo.api}/api/v1/setup-keys",
            json={
                "name": "demo gateway",
                "kind": "gateway",
                "key": GATEWAY_KEY,
                "expires_in": 0,
                "auto_groups": ["users"],
            },
            headers={"Authorization": f"Bearer {admin_token}"},
        )
    if made.status_code not in (201, 409):  # 409: made on an earlier run
        raise RuntimeError(f"cannot create the gateway's setup key: {made.status_code} {made.text}")
    gateway = await ServiceProcess.start(
        "meshssh-gateway",
        *("--nats-url", nats.url, "--management-url", f"http://{demo.api}"),
        *("--mesh-ip", "127.0.0.4", "--name", "demo-gateway"),
        *("--state-dir", str(demo.state("demo-gateway")), "--listen", demo.gateway),
        *("--allowed-origin", f"http://{demo.api}", "--log-format", "json"),
        env={"MESHSSH_SETUP_KEY": GATEWAY_KEY},
    )
    await gateway.wait_ready(timeout=60)
    return gateway


async def ssh_config(demo: Demo) -> Path:
    """An ssh_config for the demo that includes demo-laptop's drop-in."""
    await command(
        script("meshssh"),
        "config",
        "install",
        "--file",
        str(demo.dropin),
        "--state-dir",
        str(demo.state("demo-laptop")),
    )
    config = demo.run / "ssh_config"
    config.write_text(f"Include {demo.dropin}\n")
    return config


def print_guide(demo: Demo, nats_url: str, endpoints: dict[str, object], cfg: Path) -> None:
    """Print where everything listens and the exact commands to try."""
    laptop = demo.state("demo-laptop")
    user = getpass.getuser()
    meshssh = script("meshssh")
    ops: dict[str, str] = endpoints["ops"]  # type: ignore[assignment]
    peers: dict[str, dict[str, object]] = endpoints["peers"]  # type: ignore[assignment]
    passwords: dict[str, str] = endpoints["users"]  # type: ignore[assignment]
    server_ops: dict[str, str] = peers["demo-server"]["ops"]  # type: ignore[assignment]
    metrics = [f"{k} {v}/metrics" for k, v in ops.items()]
    metrics += [f"demo-server {k} {v}/metrics" for k, v in server_ops.items()]
    metrics_lines = "\n                    ".join(metrics)
    say(f"""
meshssh is running (state in {demo.run}; endpoints in {demo.run / "endpoints.json"})
  nats-server       {nats_url}  (auth on; scripts connect with {demo.run / "bus" / "admin.creds"})
  dashboard         http://{demo.api}/  (sign in as alice, an admin; bob reads only)
  browser terminals ws://{demo.gateway}/v1/terminal  (meshssh-gateway, peer demo-gateway
                    127.0.0.4: a peer's page in the dashboard -> Connect)
  API               http://{demo.api}/api/v1  (OpenAPI docs at http://{demo.api}/docs)
  OIDC provider     http://{demo.provider}/.well-known/openid-configuration
  metrics           {metrics_lines}
  demo users        {"  ".join(f"{u} / {p}" for u, p in passwords.items())}
  peers             demo-server 127.0.0.2 (relay :{RELAY_PORT}, sshd :{SSH_PORT})
                    demo-laptop 127.0.0.3 (your peer)

1. Log in as alice (open the URL, enter the code, alice's password):
   {meshssh} login --state-dir {laptop} --no-browser
2. Then, from demo-laptop to demo-server, as the local account {user}:
   ssh -F {cfg} {user}@demo-server 'id; hostname'
   echo hello > /tmp/meshssh-demo.txt
   scp -F {cfg} /tmp/meshssh-demo.txt {user}@demo-server:/tmp/meshssh-demo-copy.txt
   sftp -F {cfg} {user}@demo-server
   {meshssh} ssh --state-dir {laptop} {user}@demo-server uptime
Press Ctrl-C to stop everything (closing the terminal or SIGTERM does too).""")


async def run_demo(demo: Demo, lock: DemoLock) -> None:
    """Start everything, write endpoints.json, print the guide; stop it all when cancelled."""
    admin_token = secret_file(demo.run / "admin-token", secrets.token_urlsafe(24))
    users_file = demo.run / "users.json"
    passwords = await demo_passwords(demo, users_file)
    services: list[ServiceProcess] = []
    peers: list[asyncio.subprocess.Process] = []
    nats: NatsServer | None = None
    try:
        keys = bus_keys(demo.run / "bus")
        nats = await start_nats(demo.run / "nats", keys)
        services.append(
            await ServiceProcess.start(
                "meshssh-authn",
                *nats.authn_flags(),
                "--listen",
                demo.provider,
                "--users-file",
                str(users_file),
                "--log-format",
                "json",
                "--dashboard-redirect-uri",
                f"http://{demo.api}/auth/callback",
            )
        )
        services.append(
            await ServiceProcess.start(
                "meshssh-policy",
                *nats.flags("policy"),
                "--listen",
                demo.api,
                "--seed",
                str(SEED),
                "--mesh-prefix",
                "127.0.0.0/8",
                "--bus-keys",  # it signs the peers' JWTs at registration and revokes them
                str(keys.dir),
                "--log-format",
                "json",
                "--admin-users",
                "alice",
                "--gateway-url",
                f"http://{demo.gateway}",
                env={"MESHSSH_ADMIN_TOKEN": admin_token},
            )
        )
        for proc in services:
            await proc.wait_ready(timeout=60)
        await wait_http(f"http://{demo.api}/api/v1/auth/config")  # authn published its keys
        services.append(await start_gateway(demo, nats, admin_token))
        peer_ops: dict[str, dict[str, str]] = {}
        for name, peer in PEERS.items():
            ops = {p: "http://" + free_listen("127.0.0.1:0") for p in ["agent", *peer["children"]]}
            await start_peer(demo, name, nats, ops, peers)
            peer_ops[name] = ops
        cfg = await ssh_config(demo)
        endpoints: dict[str, object] = {
            "nats_url": nats.url,
            "api_url": f"http://{demo.api}",
            "provider_url": f"http://{demo.provider}",
            "ops": {p.name.removeprefix("meshssh-"): p.ops_url for p in services},
            "admin_token": admin_token,
            "setup_key": PEERS["demo-laptop"]["setup_key"],
            "setup_keys": {name: peer["setup_key"] for name, peer in PEERS.items()}
            | {"demo-gateway": GATEWAY_KEY},
            "gateway_url": f"http://{demo.gateway}",
            "users": passwords,
            "ssh_config": str(cfg),
            "peers": {
                name: {
                    "name": name,
                    "mesh_ip": peer["mesh_ip"],
                    "relay_port": RELAY_PORT,
                    "ssh_port": SSH_PORT,
                    "state_dir": str(demo.state(name)),
                    "ops": peer_ops[name],
                }
                for name, peer in PEERS.items()
            },
            "nats_creds": {role: str(keys.creds(role)) for role in ("policy", "authn")},
        }
        path = demo.run / "endpoints.json"  # holds the admin token and passwords: 0600
        write_secret_file(path, json.dumps(endpoints, indent=2) + "\n")  # atomic
        lock.update(state="running", endpoints=str(path))
        print_guide(demo, nats.url, endpoints, cfg)
        await asyncio.Event().wait()  # until cancelled by a stop signal
    finally:
        say("stopping...", err=True)
        for agent in reversed(peers):
            await terminate(agent, 15)
        for proc in reversed(services):
            code = await proc.stop()
            if code not in (0, -signal.SIGTERM):
                say(f"{proc.name} exited {code}:\n{proc.output()}", err=True)
        if nats is not None:
            await nats.stop()


async def main_async(demo: Demo) -> int:
    """Hold the demo lock, run the demo until a signal, and stop it all."""
    try:
        lock = await DemoLock.acquire(
            pid=os.getpid(), run_dir=str(demo.run), api_url=f"http://{demo.api}"
        )
    except DemoBusy as e:
        say(f"make run: {e}", err=True)
        return 1
    try:
        wanted = (
            demo.api,
            demo.provider,
            demo.gateway,
            f"127.0.0.2:{RELAY_PORT}",
            f"127.0.0.2:{SSH_PORT}",
        )
        busy = [text for text in map(port_in_use, wanted) if text]
        if busy:
            say(f"make run: cannot start: {'; '.join(busy)}", err=True)
            return 1
        demo.run.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(run_demo(demo, lock))
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        task.cancel()  # whether still starting or running: its finally stops everything
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except Exception as e:  # a start-up failure: everything started is stopped already
            say(f"make run: {e}", err=True)
            return 1
        return 0
    finally:
        await lock.release()


def parse_args(argv: list[str]) -> Demo:
    """The demo's layout from the command line and the environment."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="run_local.py", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=Path(env("MESHSSH_RUN_DIR") or ROOT / ".run"))
    p.add_argument("--api-listen", default=env("MESHSSH_DEMO_API_LISTEN") or "127.0.0.1:8080")
    p.add_argument(
        "--provider-listen", default=env("MESHSSH_DEMO_PROVIDER_LISTEN") or "127.0.0.1:8081"
    )
    p.add_argument(
        "--gateway-listen", default=env("MESHSSH_DEMO_GATEWAY_LISTEN") or "127.0.0.1:8090"
    )
    args = p.parse_args(argv)
    return Demo(
        args.run_dir.absolute(),
        free_listen(args.api_listen),
        free_listen(args.provider_listen),
        free_listen(args.gateway_listen),
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args(sys.argv[1:]))))
