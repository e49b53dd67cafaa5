"""What does session recording cost meshssh-sshd: throughput, and memory per recorded session?

Starts, on loopback: a nats-server with JetStream and the ``MESHSSH_RECORDINGS`` stream, and
``meshssh-sshd`` with a map in which two users log in as the same throwaway account: ``plain``
(no session rules) and ``rec`` (``recording: required`` and ``record_exec``, so non-PTY
commands are recorded too, with every chunk acked by JetStream). Then:

1. throughput: SIZE of output read through OpenSSH's ``ssh``, as users run it, ``plain`` and
   ``rec`` interleaved (ABBA...), BENCH_ROUNDS rounds each, for two kinds of session and two
   outputs. Kinds: ``pty`` (``ssh -tt``: a terminal session, what recording is for and what
   it records by default) and ``exec`` (``ssh`` without a terminal: recorded only with
   ``record_exec``; pipes carry output several times faster than a terminal). Outputs: ``yes``
   (``yes <text> | head -c SIZE``, a line repeated: it compresses ~1000 times) and ``text``
   (``cat`` of Python's own sources, which compress ~3.5 times, like most real terminal
   output). The figure is the median of the ratios of adjacent pairs (recording on / off;
   the issue's bar is 0.9), with min and max, next to both sides' MB/s (min, median, max),
   the recording's stored bytes per output byte, and the CPU seconds per GiB of the sshd (and
   of it, the kernel's share) and nats-server processes. The client's output goes to
   ``wc -c`` and is checked (a terminal turns each newline into CR LF);
2. memory: the RSS of the meshssh-sshd process with BENCH_SESSIONS idle sessions open
   (``sleep``), once as ``plain`` and once as ``rec``; the difference divided by the number of
   sessions is the memory one recorded session adds. (A session that prints fast holds at
   most 4 MiB of output not yet packed, two batches being compressed and 8 MiB of messages
   awaiting acks on top; this part does not measure it.)

The machine's other load shows as spread between runs, which the interleaving evens out; all
processes share its cores. Run as root (it creates a user):
``.venv/bin/python bench/recording_overhead.py`` (about 5 minutes). Knobs: BENCH_ROUNDS (7),
BENCH_SIZE_MB (128), BENCH_SESSIONS (100), BENCH_KINDS (``pty,exec``), BENCH_OUTPUTS
(``yes,text``). The last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncssh
import jwt

from meshssh_common import subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.recording_stream import ensure_recordings_stream
from meshssh_common.session_rules import attach
from meshssh_common.ssh_auth import build_table
from meshssh_common.wire import (
    FirewallRule,
    JwksSnapshot,
    JwtConfig,
    NetworkMap,
    PeerConfig,
    SessionRules,
)
from meshssh_testkit import NatsServer, os_users
from meshssh_testkit.signing import jwks_signer, map_signer

sys.path.insert(0, str(Path(__file__).parent))
from ssh_throughput import (
    AUDIENCE,
    CLIENT_IP,
    ISSUER,
    KID,
    MESH_IP,
    Setup,
    remove_user,
    rss_kib,
    start_meshssh,
    write_client_files,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
SIZE = int(os.environ.get("BENCH_SIZE_MB", "128")) << 20
SESSIONS = int(os.environ.get("BENCH_SESSIONS", "100"))
OUTPUTS = os.environ.get("BENCH_OUTPUTS", "yes,text").split(",")
KINDS = os.environ.get("BENCH_KINDS", "pty,exec").split(",")
TEXT = "the quick brown fox jumps over the lazy dog 0123456789 ~!@#$%^&*()"
RECORDED = SessionRules(recording="required", record_exec=True)


def token(setup: Setup, sub: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600}
    return jwt.encode(claims, setup.signing, algorithm="EdDSA", headers={"kid": KID})


async def publish_state(natsd: NatsServer, setup: Setup) -> None:
    nc = await natsd.connect()
    try:
        js = nc.jetstream()
        await ensure_recordings_stream(js, max_bytes=8 * 2**30)
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(setup.signing.public_key()))
        config = JwtConfig(issuer=ISSUER, audiences=(AUDIENCE,))
        keys = TypedKV(
            await open_bucket(js, subjects.BUCKET_JWKS), JwksSnapshot, signer=jwks_signer()
        )
        await keys.put(
            subjects.JWKS_KEY,
            JwksSnapshot(jwt=config, keys=({**jwk, "kid": KID, "use": "sig", "alg": "EdDSA"},)),
        )
        table = attach(build_table("sub", [("plain", "*"), ("rec", "*")]), {("rec", "*"): RECORDED})
        netmap = NetworkMap(
            serial=1,
            peer=PeerConfig(
                id="bench",
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
            ssh_auth=table,
        )
        maps = TypedKV(
            await open_bucket(js, subjects.BUCKET_NETMAPS), NetworkMap, signer=map_signer()
        )
        await maps.put(subjects.netmap_key("bench"), netmap)
    finally:
        await nc.close()


async def connect(setup: Setup, sub: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        MESH_IP,
        setup.meshssh_port,
        username=setup.user,
        password=token(setup, sub),
        known_hosts=None,
        preferred_auth="password",
        local_addr=(CLIENT_IP, 0),
        encryption_algs=["aes128-gcm@openssh.com"],
    )


def make_corpus(tmp: Path) -> Path:
    """SIZE bytes of Python's own sources (real text), readable by the bench's account."""
    sources = sorted(Path(os.__file__).parent.glob("*.py"))
    corpus = tmp / "corpus.txt"
    with corpus.open("wb") as out:
        written = 0
        while written < SIZE:
            for path in sources:
                data = path.read_bytes()[: SIZE - written]
                out.write(data)
                written += len(data)
                if written >= SIZE:
                    break
    tmp.chmod(0o755)
    corpus.chmod(0o644)
    return corpus


def command(output: str, corpus: Path) -> str:
    if output == "yes":
        return f"yes '{TEXT}' | head -c {SIZE}"
    return f"cat {corpus}"


def expected_bytes(output: str, corpus: Path, kind: str) -> int:
    """What ``wc -c`` counts of ``output``: a terminal sends each newline as CR LF."""
    if kind != "pty":
        return SIZE
    if output == "yes":
        return SIZE + SIZE // (len(TEXT) + 1)
    return SIZE + corpus.read_bytes().count(b"\n")


def download(setup: Setup, sub: str, cmd: str, kind: str, expect: int) -> float:
    """MB/s out of one session through OpenSSH's ssh, from its first byte to its last.

    Timed from the first byte, so the login (the same on both sides) does not dilute the
    difference; the first read's bytes are not counted.
    """
    terminal = ["-tt"] if kind == "pty" else []
    argv = setup.ssh_argv("meshssh", *terminal, "-o", "Ciphers=aes128-gcm@openssh.com", command=cmd)
    proc = subprocess.Popen(
        argv,
        env=setup.env(token(setup, sub)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    buf = bytearray(1 << 20)
    got = first = 0
    started = 0.0
    while n := proc.stdout.readinto(buf):
        if not got:
            started, first = time.perf_counter(), n
        got += n
    elapsed = time.perf_counter() - started
    err = proc.stderr.read()
    if proc.wait(60) != 0 or got != expect:
        sys.exit(
            f"{sub} {kind}: got {got} bytes (expected {expect}), exit {proc.returncode}: {err!r}"
        )
    return (got - first) / elapsed / 1e6


async def stored_bytes(natsd: NatsServer) -> int:
    nc = await natsd.connect()
    try:
        info = await nc.jetstream().stream_info(subjects.RECORDINGS_STREAM)
        return int(info.state.bytes)
    finally:
        await nc.close()


async def held_rss(setup: Setup, sub: str) -> int:
    """The sshd's RSS (KiB) with SESSIONS idle sessions of ``sub`` open."""
    conns = []
    try:
        for _ in range(SESSIONS):
            conn = await connect(setup, sub)
            conns.append(conn)
            await conn.create_process("sleep 600")
        await asyncio.sleep(1.5)
        return rss_kib([setup.meshssh_pid])
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
        await asyncio.sleep(1.5)


def cpu_seconds(pid: int, *, system: bool = False) -> float:
    """User + system CPU seconds of a process (only system with ``system``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user = 0 if system else int(fields[11])
    return (user + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


async def throughput(
    setup: Setup, natsd: NatsServer, nats_pid: int, kind: str, output: str, corpus: Path
) -> dict[str, object]:
    cmd, expect = command(output, corpus), expected_bytes(output, corpus, kind)
    label = f"{kind} {output}"
    for sub in ("plain", "rec"):  # warm up both paths
        await asyncio.to_thread(download, setup, sub, cmd, kind, expect)
    rates: dict[str, list[float]] = {"plain": [], "rec": []}
    cpu = {"plain": [0.0, 0.0, 0.0], "rec": [0.0, 0.0, 0.0]}  # sshd, nats-server, sshd system
    before = await stored_bytes(natsd)
    for i in range(ROUNDS):
        for sub in ("plain", "rec") if i % 2 == 0 else ("rec", "plain"):
            sshd0, nats0 = cpu_seconds(setup.meshssh_pid), cpu_seconds(nats_pid)
            sys0 = cpu_seconds(setup.meshssh_pid, system=True)
            rates[sub].append(await asyncio.to_thread(download, setup, sub, cmd, kind, expect))
            cpu[sub][0] += cpu_seconds(setup.meshssh_pid) - sshd0
            cpu[sub][1] += cpu_seconds(nats_pid) - nats0
            cpu[sub][2] += cpu_seconds(setup.meshssh_pid, system=True) - sys0
    stored = await stored_bytes(natsd) - before
    ratios = [r / p for r, p in zip(rates["rec"], rates["plain"], strict=True)]
    gib = SIZE * ROUNDS / 2**30
    result: dict[str, object] = {
        "plain_mb_s": spread(rates["plain"]),
        "recorded_mb_s": spread(rates["rec"]),
        "ratio": spread(ratios, 3),
        "stored_bytes_per_output_byte": round(stored / (SIZE * ROUNDS), 4),
        "sshd_cpu_s_per_gib": {k: round(v[0] / gib, 2) for k, v in cpu.items()},
        "sshd_system_cpu_s_per_gib": {k: round(v[2] / gib, 2) for k, v in cpu.items()},
        "nats_cpu_s_per_gib": {k: round(v[1] / gib, 2) for k, v in cpu.items()},
    }
    print(f"{label}: MB/s plain {result['plain_mb_s']}, recorded {result['recorded_mb_s']}")
    print(f"{label}: ratios {[round(r, 3) for r in ratios]} -> {result['ratio']}")
    print(
        f"{label}: stored {result['stored_bytes_per_output_byte']} B per output byte; "
        f"CPU s/GiB sshd {result['sshd_cpu_s_per_gib']} (system "
        f"{result['sshd_system_cpu_s_per_gib']}), nats {result['nats_cpu_s_per_gib']}",
        flush=True,
    )
    return result


async def run(setup: Setup, natsd: NatsServer, corpus: Path) -> dict[str, object]:
    assert natsd.proc is not None
    report: dict[str, object] = {"size_mb": SIZE >> 20, "rounds": ROUNDS}
    for kind in KINDS:
        for output in OUTPUTS:
            report[f"{kind}_{output}"] = await throughput(
                setup, natsd, natsd.proc.pid, kind, output, corpus
            )
    idle = rss_kib([setup.meshssh_pid])
    plain_rss = await held_rss(setup, "plain")
    rec_rss = await held_rss(setup, "rec")
    memory = {
        "sessions": SESSIONS,
        "rss_idle_kib": idle,
        "rss_plain_sessions_kib": plain_rss,
        "rss_recorded_sessions_kib": rec_rss,
        "kib_per_session_plain": round((plain_rss - idle) / SESSIONS, 1),
        "kib_per_session_recorded": round((rec_rss - idle) / SESSIONS, 1),
        "kib_added_by_recording": round((rec_rss - plain_rss) / SESSIONS, 1),
    }
    print(f"memory: {memory}")
    report["memory"] = memory
    return report


async def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the bench creates a user")
    with tempfile.TemporaryDirectory(prefix="rec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        setup = Setup(tmp)
        write_client_files(setup)
        natsd = await NatsServer.start(tmp / "nats")
        setup.uid = await asyncio.to_thread(os_users.add_user, setup.user, password="*")
        try:
            await publish_state(natsd, setup)
            start_meshssh(setup, natsd)
            report = await run(setup, natsd, make_corpus(tmp))
        finally:
            for proc in setup.procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
                if proc.poll() is None:
                    proc.kill()
            await natsd.stop()
            await asyncio.to_thread(remove_user, setup)
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
