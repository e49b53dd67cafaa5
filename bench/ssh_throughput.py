"""How does meshssh-sshd compare with OpenSSH's sshd for bulk data, setup time and memory?

Starts, on loopback: a nats-server with JetStream, ``meshssh-sshd`` (JWT auth, a network map
and signing keys in KV as the management plane and authn would publish them) and a real
OpenSSH ``sshd`` from Debian's openssh-server with its own config, host key and port. Then:

1. throughput: 1 GiB through ``ssh host 'cat > /dev/null'`` (upload) and out of
   ``ssh host 'head -c 1G /dev/zero' > /dev/null`` (download), with aes128-gcm@openssh.com and
   with chacha20-poly1305@openssh.com, A and B interleaved (ABBA...), 5 rounds of each side;
2. connection setup: ``ssh host true``, 30 runs each, alternating, both with the key exchange
   ``curve25519-sha256`` (OpenSSH with a public key; meshssh with a per-peer token as the
   password, and its setup time includes the token exchange that made it, SPEC §6: one
   ``TokenExchangeRequest`` on ``meshssh.authn.v1.req.token-exchange.<client peer>`` per
   connection, timed on its own too);
3. memory: the RSS of the meshssh-sshd process with 200 concurrent idle sessions (and, for
   reference, the summed RSS of this bench's OpenSSH sshd processes holding 200 sessions).

The exchange is answered by :class:`ExchangeStandIn`, a minimal stand-in for meshssh-authn's
exchange on the real subject with the real messages: it signs, as the DESIGN of issue 15 says
authn does, an EdDSA token (kid ``x-…``, ``aud`` ``meshssh:peer:bench``, ``exp`` ≤ 120 s, a
``jti``) with an exchange key the bench publishes in the JWKS snapshot's ``exchange_keys``.
Its figures are provisional until the bench starts the real authn. An sshd without
``--accept-idp-tokens`` (before issue 15) does not know exchange keys: the stand-in then signs
the same claims with the IdP key and audience, which costs the same. sshd runs with
``--accept-idp-tokens`` when it has it, for the throughput and memory parts, which log in with
the IdP token directly.

Figures are ratios meshssh / OpenSSH (throughput: higher is better; setup: lower is better),
each the median of the ratios of adjacent A/B pairs (so slow drifts of a busy machine cancel),
printed with min and max, next to the absolute MB/s of both sides. The CPU seconds the
meshssh-sshd process used per GiB are reported too. Both servers log in as a throwaway user
the bench creates (and removes): a stock account, so that no heavy shell start-up file
(root's ``.bashrc`` here runs ``pyenv init``, 100 ms, sourced because bash sees
``SSH_CLIENT``) hides the servers' own cost; meshssh switches to it as it does in
production. Run as root:
``.venv/bin/python bench/ssh_throughput.py`` (about 4 minutes). Knobs: BENCH_ROUNDS (5, at
least 5 for a figure worth quoting), BENCH_SIZE_MB (1024), BENCH_PARTS (``throughput,setup,
memory``), BENCH_DIRECTIONS (``upload,download``), BENCH_CIPHERS (``aes128,chacha20``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from meshssh_common import codec, subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.ssh_auth import build_table
from meshssh_common.wire import FirewallRule, JwksSnapshot, JwtConfig, NetworkMap, PeerConfig
from meshssh_common.wire.authn import TokenExchangeReply, TokenExchangeRequest, peer_audience
from meshssh_testkit import CommandFailed, CommandTimeout, NatsServer, os_users, script
from meshssh_testkit.signing import jwks_signer, map_signer, write_test_pins

GIB = 1 << 30
SIZE = int(os.environ.get("BENCH_SIZE_MB", "1024")) << 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SETUP_RUNS = 30
IDLE_SESSIONS = 200
PARTS = os.environ.get("BENCH_PARTS", "throughput,setup,memory").split(",")
DIRECTIONS = os.environ.get("BENCH_DIRECTIONS", "upload,download").split(",")
ALL_CIPHERS = {"aes128": "aes128-gcm@openssh.com", "chacha20": "chacha20-poly1305@openssh.com"}
CIPHERS = {
    k: v
    for k, v in ALL_CIPHERS.items()
    if k in os.environ.get("BENCH_CIPHERS", "aes128,chacha20").split(",")
}
MESH_IP, OPENSSH_IP, CLIENT_IP = "127.0.0.2", "127.0.0.6", "127.0.0.3"
ISSUER, AUDIENCE, KID = "https://idp.bench", "meshssh", "bench-1"
EXCHANGE_ISSUER, EXCHANGE_KID = "urn:meshssh:authn", "x-0123456789abcdef"
SERVER_PEER, CLIENT_PEER = "bench", "bench-client"


class Setup:
    """Everything the bench started, and how to reach it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.user = f"bench{os.getpid()}"
        self.signing = Ed25519PrivateKey.generate()
        self.exchange_key = Ed25519PrivateKey.generate()
        self.per_peer_keys = False  # sshd knows exchange keys (issue 15): set at start
        self.exchange: ExchangeStandIn | None = None
        self.client_key = tmp / "id_ed25519"
        self.known_hosts = tmp / "known_hosts"
        self.askpass = tmp / "askpass.sh"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.meshssh_port = 0
        self.meshssh_pid = 0
        self.openssh_port = 0
        self.openssh_pid = 0
        self.uid = -1  # the throwaway user's, once created

    def token(self, lifetime: int = 600) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench-user",
            "iat": now,
            "exp": now + lifetime,
        }
        return jwt.encode(claims, self.signing, algorithm="EdDSA", headers={"kid": KID})

    def ssh_argv(self, target: str, *extra: str, command: str) -> list[str]:
        """ssh to ``meshssh`` (JWT password) or ``openssh`` (public key), running ``command``."""
        common = [
            "ssh",
            "-F",
            "none",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "Compression=no",
            "-o",
            f"BindAddress={CLIENT_IP}",
            *extra,
        ]
        if target == "meshssh":
            return [
                *common,
                "-o",
                "BatchMode=no",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-p",
                str(self.meshssh_port),
                f"{self.user}@{MESH_IP}",
                command,
            ]
        return [
            *common,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(self.client_key),
            "-p",
            str(self.openssh_port),
            f"{self.user}@{OPENSSH_IP}",
            command,
        ]

    def env(self, token: str | None = None) -> dict[str, str]:
        """The ssh environment; askpass answers ``token`` (default: a fresh IdP token)."""
        return {
            **os.environ,
            "SSH_ASKPASS": str(self.askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
            "BENCH_TOKEN": token or self.token(),
        }


class ExchangeStandIn:
    """Answers token exchanges on the bus as the DESIGN of issue 15 says authn does.

    A stand-in (see the module docstring): it does not validate the IdP token beyond reading
    its ``sub`` (authn's validation is the same JwtValidator sshd runs, measured by
    bench/jwt_validate.py), then signs one per-peer token.
    """

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def mint(self, request: TokenExchangeRequest) -> TokenExchangeReply:
        original = jwt.decode(request.subject_token, options={"verify_signature": False})
        now = int(time.time())
        claims = {
            "sub": original["sub"],
            "iat": original["iat"],
            "exp": min(now + 120, int(original["exp"])),
            "jti": base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(),
            "idp_iss": original["iss"],
        }
        if self.setup.per_peer_keys:
            claims |= {"iss": EXCHANGE_ISSUER, "aud": peer_audience(request.target_peer)}
            key, kid = self.setup.exchange_key, EXCHANGE_KID
        else:  # an sshd before issue 15: same work, the IdP's key and audience
            claims |= {"iss": ISSUER, "aud": AUDIENCE}
            key, kid = self.setup.signing, KID
        token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})
        return TokenExchangeReply(access_token=token, expires_in=claims["exp"] - now)

    async def handle(self, msg: Msg) -> None:
        reply = self.mint(codec.decode(msg.data, TokenExchangeRequest))
        await msg.respond(codec.encode(reply))


async def exchange_once(nc: NATS, idp_token: str) -> str:
    """One exchange as the client's agent does it; the per-peer token."""
    request = TokenExchangeRequest(subject_token=idp_token, target_peer=SERVER_PEER)
    msg = await nc.request(subjects.token_exchange(CLIENT_PEER), codec.encode(request), timeout=5)
    return codec.decode(msg.data, TokenExchangeReply).access_token


async def publish_state(natsd: NatsServer, setup: Setup) -> None:
    nc = await natsd.connect()  # admin: writes what policy and authn would
    try:
        js = nc.jetstream()
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(setup.signing.public_key()))
        xjwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(setup.exchange_key.public_key()))
        config = JwtConfig(issuer=ISSUER, audiences=(AUDIENCE,))
        keys = TypedKV(
            await open_bucket(js, subjects.BUCKET_JWKS), JwksSnapshot, signer=jwks_signer()
        )
        await keys.put(
            subjects.JWKS_KEY,
            JwksSnapshot(
                jwt=config,
                keys=({**jwk, "kid": KID, "use": "sig", "alg": "EdDSA"},),
                exchange_issuer=EXCHANGE_ISSUER,
                exchange_keys=({**xjwk, "kid": EXCHANGE_KID, "use": "sig", "alg": "EdDSA"},),
            ),
        )
        netmap = NetworkMap(
            serial=1,
            peer=PeerConfig(
                id=SERVER_PEER,
                name="bench",
                mesh_ip=MESH_IP,
                mesh_prefix="127.0.0.0/8",
                ssh_enabled=True,
                jwt=config,
            ),
            firewall_rules=(
                FirewallRule(
                    sources=("127.0.0.0/8",),
                    protocol="tcp",
                    action="accept",
                    policy_id="bench",
                    port="22022",
                ),
            ),
            ssh_auth=build_table("sub", [("bench-user", "*")]),
        )
        maps = TypedKV(
            await open_bucket(js, subjects.BUCKET_NETMAPS), NetworkMap, signer=map_signer()
        )
        await maps.put(subjects.netmap_key(SERVER_PEER), netmap)
    finally:
        await nc.close()


def start_meshssh(setup: Setup, natsd: NatsServer, *extra: str) -> None:
    log = (setup.tmp / "meshssh-sshd.log").open("wb")
    usage = subprocess.run(
        [script("meshssh-sshd"), "--help"], capture_output=True, text=True, timeout=30
    )
    setup.per_peer_keys = "--accept-idp-tokens" in usage.stdout
    if setup.per_peer_keys:  # the throughput and memory parts log in with the IdP token
        extra = (*extra, "--accept-idp-tokens")
    proc = subprocess.Popen(
        [
            script("meshssh-sshd"),
            *natsd.flags(),  # admin until sshd reads its map by direct get
            "--peer-id",
            SERVER_PEER,
            "--listen",
            f"{MESH_IP}:0",
            "--host-key",
            str(setup.tmp / "meshssh_host_key"),
            "--pins",
            str(write_test_pins(setup.tmp)),
            "--ops-listen",
            "127.0.0.1:0",
            "--max-sessions",
            "512",
            # These benches present the IdP token directly (no agent to exchange it for a
            # per-peer token), which sshd refuses unless told otherwise.
            "--accept-idp-tokens",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    setup.procs.append(proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = (setup.tmp / "meshssh-sshd.log").read_text(errors="replace")
        if m := re.search(rf"ssh listening.*address={re.escape(MESH_IP)}:(\d+)", text):
            setup.meshssh_port, setup.meshssh_pid = int(m[1]), proc.pid
            key = (setup.tmp / "meshssh_host_key").read_bytes()
            public = asyncssh.import_private_key(key).export_public_key().decode().strip()
            with setup.known_hosts.open("a") as f:
                f.write(f"[{MESH_IP}]:{setup.meshssh_port} {public}\n")
            return
        if proc.poll() is not None:
            sys.exit(f"meshssh-sshd exited early:\n{text}")
        time.sleep(0.05)
    sys.exit("meshssh-sshd did not start")


def start_openssh(setup: Setup) -> None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        sys.exit("OpenSSH sshd not found: install openssh-server (scripts/os-packages.txt)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    host_key = setup.tmp / "openssh_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = setup.tmp / "authorized_keys"
    authorized.write_text(Path(f"{setup.client_key}.pub").read_text())
    # sshd reads it as the user: the file and the directory must be readable by them.
    authorized.chmod(0o644)
    setup.tmp.chmod(0o755)
    with contextlib.closing(socket.socket()) as s:
        s.bind((OPENSSH_IP, 0))
        setup.openssh_port = s.getsockname()[1]
    config = setup.tmp / "sshd_config"
    config.write_text(
        f"Port {setup.openssh_port}\nListenAddress {OPENSSH_IP}\nHostKey {host_key}\n"
        f"PidFile {setup.tmp / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin no\nPasswordAuthentication no\n"
        "MaxSessions 1000\nMaxStartups 1000\nLogLevel ERROR\n"
    )
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    setup.procs.append(proc)
    setup.openssh_pid = proc.pid
    public = Path(f"{host_key}.pub").read_text().split()[:2]
    with setup.known_hosts.open("a") as f:
        f.write(f"[{OPENSSH_IP}]:{setup.openssh_port} {' '.join(public)}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            contextlib.closing(socket.create_connection((OPENSSH_IP, setup.openssh_port), 1)),
        ):
            return
        time.sleep(0.05)
    sys.exit("OpenSSH sshd did not start")


def timed(
    argv: list[str], env: dict[str, str], stdin_cmd: str | None = None, *, expect: int = -1
) -> float:
    """Wall time of one ssh run. ``stdin_cmd`` is piped into it through the shell; with
    ``expect`` >= 0 its output goes to ``wc -c`` and must be that many bytes (a download)."""
    started = time.perf_counter()
    if stdin_cmd is None and expect < 0:
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
        )
    else:
        line = " ".join(_quote(a) for a in argv)
        line = f"{stdin_cmd} | {line}" if stdin_cmd else f"{line} < /dev/null"
        if expect >= 0:
            line += " | wc -c"
        result = subprocess.run(["sh", "-c", line], env=env, capture_output=True, timeout=300)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{argv} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    if expect >= 0 and int(result.stdout.split()[-1]) != expect:
        sys.exit(f"{argv} gave {result.stdout!r} bytes, expected {expect}")
    return elapsed


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def alternate(
    runs: int, a: Callable[[], float], b: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """``runs`` of each, interleaved ABBAAB...: neither side always runs first."""
    xs, ys = [], []
    for i in range(runs):
        if i % 2 == 0:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
    return xs, ys


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def sshd_processes(root: int) -> list[int]:
    """The ``sshd`` processes at or below ``root`` (this bench's OpenSSH, not anyone else's)."""
    found = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                found.append(pid)
    return found


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (this bench's OpenSSH sshd, not anyone else's)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += frontier
    return found


async def hold_sessions(setup: Setup, target: str, measure: Callable[[], int]) -> int:
    """Open IDLE_SESSIONS sessions (each running ``sleep``), return ``measure()`` meanwhile."""
    conns: list[asyncssh.SSHClientConnection] = []
    procs: list[Any] = []
    try:
        for _ in range(IDLE_SESSIONS):
            if target == "meshssh":
                conn = await asyncssh.connect(
                    MESH_IP,
                    setup.meshssh_port,
                    username=setup.user,
                    password=setup.token(),
                    known_hosts=None,
                    preferred_auth="password",
                    local_addr=(CLIENT_IP, 0),
                )
            else:
                conn = await asyncssh.connect(
                    OPENSSH_IP,
                    setup.openssh_port,
                    username=setup.user,
                    client_keys=[str(setup.client_key)],
                    known_hosts=None,
                    preferred_auth="publickey",
                    local_addr=(CLIENT_IP, 0),
                )
            conns.append(conn)
            procs.append(await conn.create_process("sleep 600"))
        await asyncio.sleep(1.0)
        return measure()
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


def fmt(values: list[float], digits: int = 1) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:8.{digits}f} (min {lo:.{digits}f}, max {hi:.{digits}f})"


def remove_user(setup: Setup) -> None:
    """Delete the throwaway user; first stop what still runs as it (OpenSSH may leave a
    session's ``sleep`` behind for a moment after its connection closed, and ``userdel``
    refuses a user with processes)."""
    try:
        os_users.remove_user(setup.user, setup.uid)
    except (CommandFailed, CommandTimeout) as e:
        print(f"userdel {setup.user} failed: {e}", file=sys.stderr)


def write_client_files(setup: Setup) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    setup.client_key.write_bytes(key.export_private_key())
    setup.client_key.chmod(0o600)
    Path(f"{setup.client_key}.pub").write_bytes(key.export_public_key())
    setup.askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$BENCH_TOKEN"\n')
    setup.askpass.chmod(0o755)


async def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the bench creates a user, and sshd needs /run/sshd")
    with tempfile.TemporaryDirectory(prefix="ssh-bench-") as tmp_name:
        tmp = Path(tmp_name)
        setup = Setup(tmp)
        write_client_files(setup)
        natsd = await NatsServer.start(tmp / "nats")
        # "*": no password, but not locked (sshd without PAM refuses locked accounts).
        setup.uid = await asyncio.to_thread(os_users.add_user, setup.user, password="*")
        bus = await natsd.connect()  # admin: stands in for authn and for the client's agent
        try:
            await publish_state(natsd, setup)
            start_meshssh(setup, natsd)
            start_openssh(setup)
            setup.exchange = ExchangeStandIn(setup)
            await bus.subscribe(subjects.AUTHN_TOKEN_EXCHANGE_ALL, cb=setup.exchange.handle)
            report = await run(setup, bus)
        finally:
            await bus.close()
            for proc in setup.procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
                if proc.poll() is None:
                    proc.kill()
            await natsd.stop()
            await asyncio.to_thread(remove_user, setup)
    print(json.dumps(report))


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerCpu:
    """CPU seconds of one server's processes during a run, sampled every 50 ms.

    Counted: the server process, its descendants and every process of the bench user (the
    session: OpenSSH's per-user sshd, which is reparented to init when it exits, and
    ``cat``/``head`` on both servers). A process that ends between two samples loses at
    most its last 50 ms, on both sides alike.
    """

    def __init__(self, root: int, uid: int) -> None:
        self._root, self._uid = root, uid
        self._base: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, int]:
        seen: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
        ours: set[int] = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(stat.parent.name)
                fields = stat.read_text().rsplit(")", 1)[1].split()
                seen[pid] = (int(fields[1]), int(fields[11]) + int(fields[12]))
                if stat.parent.stat().st_uid == self._uid:
                    ours.add(pid)
        frontier = {self._root}
        while frontier:
            ours |= frontier
            frontier = {p for p, (ppid, _) in seen.items() if ppid in frontier} - ours
        return {p: seen[p][1] for p in ours if p in seen}

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._last.update(self._sample())

    def __enter__(self) -> ServerCpu:
        self._base = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())

    @property
    def seconds(self) -> float:
        ticks = sum(t - self._base.get(p, 0) for p, t in self._last.items())
        return ticks / os.sysconf("SC_CLK_TCK")


def syscalls(pid: int) -> int:
    """Read and write system calls the threads of a process have made so far.

    Summed over ``/proc/<pid>/task/*/io``: the process-wide file also counts reaped children
    (the session's ``head``/``cat``).
    """
    total = 0
    for io in Path(f"/proc/{pid}/task").glob("*/io"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(": ") for line in io.read_text().splitlines())
            total += int(fields["syscr"]) + int(fields["syscw"])
    return total


async def throughput(setup: Setup, out: dict[str, Any], rows: list[str]) -> None:
    """Upload and download SIZE bytes, meshssh and OpenSSH interleaved, per cipher."""
    env = setup.env
    label = f"{SIZE >> 20} MiB"
    for direction in DIRECTIONS:
        for name, cipher in CIPHERS.items():
            cpu: list[float] = []
            calls: list[float] = []
            # Server CPU including the session processes (cat/head), for both servers.
            total: dict[str, list[float]] = {"meshssh": [], "openssh": []}

            def run_one(
                target: str,
                cipher: str = cipher,
                direction: str = direction,
                cpu: list[float] = cpu,
                calls: list[float] = calls,
                total: dict[str, list[float]] = total,
            ) -> float:
                pid = setup.meshssh_pid
                server = pid if target == "meshssh" else setup.openssh_pid
                before = cpu_seconds(pid) if target == "meshssh" else 0.0
                calls_before = syscalls(pid) if target == "meshssh" else 0
                with ServerCpu(server, setup.uid) as sampler:
                    if direction == "upload":
                        argv = setup.ssh_argv(target, "-c", cipher, command="cat > /dev/null")
                        seconds = timed(argv, env(), f"head -c {SIZE} /dev/zero")
                    else:
                        command = f"head -c {SIZE} /dev/zero"
                        argv = setup.ssh_argv(target, "-c", cipher, command=command)
                        seconds = timed(argv, env(), expect=SIZE)
                if target == "meshssh":
                    cpu.append((cpu_seconds(pid) - before) / (SIZE / GIB))
                    calls.append((syscalls(pid) - calls_before) / (SIZE >> 20))
                total[target].append(sampler.seconds / (SIZE / GIB))
                return seconds

            mine, ref = await asyncio.to_thread(
                alternate, ROUNDS, lambda: run_one("meshssh"), lambda: run_one("openssh")
            )
            mine_mbs = [SIZE / t / 1e6 for t in mine]
            ref_mbs = [SIZE / t / 1e6 for t in ref]
            ratios = [a / b for a, b in zip(mine_mbs, ref_mbs, strict=True)]
            # Upload keeps the names earlier notes used; download figures are prefixed.
            pre = "" if direction == "upload" else "download_"
            out[f"{pre}throughput_ratio_{name}"] = round(statistics.median(ratios), 3)
            out[f"{pre}throughput_ratio_{name}_min"] = round(min(ratios), 3)
            out[f"{pre}throughput_ratio_{name}_max"] = round(max(ratios), 3)
            out[f"meshssh_{pre}mb_per_s_{name}"] = round(statistics.median(mine_mbs), 1)
            out[f"openssh_{pre}mb_per_s_{name}"] = round(statistics.median(ref_mbs), 1)
            out[f"meshssh_{pre}cpu_s_per_gib_{name}"] = round(statistics.median(cpu), 2)
            for side, values in total.items():
                out[f"{side}_{pre}server_cpu_s_per_gib_{name}"] = round(
                    statistics.median(values), 2
                )
            out[f"meshssh_{pre}syscalls_per_mib_{name}"] = round(statistics.median(calls), 1)
            rows += [
                f"{direction:8} {label} {name:8} MB/s meshssh {fmt(mine_mbs)}  "
                f"openssh {fmt(ref_mbs)}",
                f"{'':26}ratio {fmt(ratios, 3)}  meshssh-sshd CPU {fmt(cpu, 2)} s/GiB, "
                f"{statistics.median(calls):.0f} read/write calls per MiB",
                f"{'':26}server CPU incl. session processes, s/GiB: meshssh "
                f"{fmt(total['meshssh'], 2)}  openssh {fmt(total['openssh'], 2)}",
            ]
            print(*rows[-3:], sep="\n", flush=True)


async def run(setup: Setup, bus: NATS) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "ssh_throughput", "rounds": ROUNDS, "size_mb": SIZE >> 20}
    rows: list[str] = []
    if "throughput" in PARTS:
        await throughput(setup, out, rows)
    if "setup" in PARTS:
        await setup_time(setup, bus, out, rows)
    if "memory" in PARTS:
        await memory(setup, out, rows)
    if "throughput" in PARTS:
        print(
            "throughput ratios (meshssh/openssh, median of pairs): "
            + ", ".join(
                f"{k.removeprefix('throughput_ratio_')} {v}"
                for k, v in out.items()
                if "throughput_ratio_" in k and not k.endswith(("_min", "_max"))
            )
        )
    return out


async def setup_time(setup: Setup, bus: NATS, out: dict[str, Any], rows: list[str]) -> None:
    """``ssh host true``, SETUP_RUNS of each, interleaved; meshssh's includes its exchange."""
    env = setup.env
    kex = ("-o", "KexAlgorithms=curve25519-sha256")
    loop = asyncio.get_running_loop()
    idp_token = setup.token()  # the agent's cached IdP token: one login, many exchanges
    exchanges: list[float] = []

    def meshssh_once() -> float:
        started = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(exchange_once(bus, idp_token), loop)
        token = future.result(timeout=10)
        exchanges.append((time.perf_counter() - started) * 1000)
        argv = setup.ssh_argv("meshssh", *kex, command="true")
        return (time.perf_counter() - started) * 1000 + timed(argv, env(token)) * 1000

    mine, ref = await asyncio.to_thread(
        alternate,
        SETUP_RUNS,
        meshssh_once,
        lambda: timed(setup.ssh_argv("openssh", *kex, command="true"), env()) * 1000,
    )
    ratios = [a / b for a, b in zip(mine, ref, strict=True)]
    out["setup_p50_ms"] = round(statistics.median(mine), 1)  # exchange included
    out["openssh_setup_p50_ms"] = round(statistics.median(ref), 1)
    out["setup_ratio_p50"] = round(statistics.median(mine) / statistics.median(ref), 3)
    out["setup_ratio_min"] = round(min(ratios), 3)
    out["setup_ratio_max"] = round(max(ratios), 3)
    out["exchange_p50_ms"] = round(statistics.median(exchanges), 2)
    out["exchange_min_ms"] = round(min(exchanges), 2)
    out["exchange_max_ms"] = round(max(exchanges), 2)
    out["exchange_stand_in"] = True  # provisional: not yet meshssh-authn's own exchange
    out["exchange_per_peer_keys"] = setup.per_peer_keys
    rows.append(f"ssh true ms (p50)   meshssh {fmt(mine)}   openssh {fmt(ref)}")
    rows.append(
        f"  incl. exchange ms {fmt(exchanges, 2)} (stand-in authn); ratio of pairs {fmt(ratios, 3)}"
    )
    print(*rows[-2:], sep="\n", flush=True)


async def memory(setup: Setup, out: dict[str, Any], rows: list[str]) -> None:
    """RSS idle and with IDLE_SESSIONS sessions open."""
    idle = rss_kib([setup.meshssh_pid])
    with_sessions = await hold_sessions(setup, "meshssh", lambda: rss_kib([setup.meshssh_pid]))
    openssh_total = await hold_sessions(
        setup, "openssh", lambda: rss_kib(sshd_processes(setup.openssh_pid))
    )
    out["rss_mib_idle"] = round(idle / 1024, 1)
    out["rss_mib_200_sessions"] = round(with_sessions / 1024, 1)
    out["openssh_rss_mib_200_sessions"] = round(openssh_total / 1024, 1)
    rows.append(
        f"RSS MiB             meshssh idle {idle / 1024:.1f}, with {IDLE_SESSIONS} "
        f"sessions {with_sessions / 1024:.1f}; openssh (all sshd processes) "
        f"{openssh_total / 1024:.1f}"
    )
    print(rows[-1], flush=True)


if __name__ == "__main__":
    asyncio.run(main())
