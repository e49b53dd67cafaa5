"""What does OpenSSH's drop-in (``ProxyCommand meshssh ssh proxy``) cost for bulk copies?

Starts, on loopback, what ``bench/ssh_throughput.py`` starts for meshssh (a nats-server, a
real ``meshssh-sshd`` with JWT auth and SFTP on, a throwaway local user), a client state
directory with the tests' static link (the peer, this peer's mesh address, a valid JWT) and
the drop-in, as ``meshssh config install`` writes it. Then copies SIZE bytes of random data
to a file in the user's home, interleaved (ABCCBA...), ROUNDS times each:

- ``scp`` through the drop-in (OpenSSH's scp in its default SFTP mode → ssh → the proxy →
  meshssh-sshd → sftp-server);
- direct: ``meshssh ssh host 'cat > file' < file`` (the reference earlier notes used);
- OpenSSH ``scp`` straight to meshssh-sshd, the JWT as the password (no proxy): what the
  same copy costs without the drop-in.

Figures: MB/s (MB = 10^6 bytes) of each, and the ratios drop-in/direct and drop-in/OpenSSH,
each the median of the ratios of adjacent runs (slow drifts of a busy machine cancel), with
min and max; the proxy's CPU seconds per GiB, and each variant's server-side CPU
(meshssh-sshd and its child), since on a machine with two cores every process's CPU is
taken from the others. The direct client does not run the packet path of
``meshssh_common.ssh_packets`` (only sshd and the proxy install it), and each client
prefers AES-GCM, OpenSSH's scp ChaCha20-Poly1305. Every copy is checked by size and SHA-256.

Run as root: ``.venv/bin/python bench/scp_throughput.py`` (about 3 minutes). Knobs:
BENCH_SIZE_MB (1024), BENCH_ROUNDS (5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh
import ssh_throughput as sshb  # the sibling bench: servers, user, token

from meshssh_testkit import NatsServer, os_users

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cli" / "tests"))

from static_link import write_launcher, write_link  # noqa: E402

from meshssh_agent.peers import PeerEntry  # noqa: E402
from meshssh_agent.ssh_config import DropIn, install, render  # noqa: E402

SIZE = int(os.environ.get("BENCH_SIZE_MB", "1024")) << 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
PEER = "bench-peer"


class ProxyCpu:
    """CPU seconds of the ``meshssh ssh proxy`` processes during one run (sampled, 50 ms)."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                args = cmdline.read_bytes().split(b"\0")
                if b"proxy" in args and any(a.endswith(b"/meshssh") for a in args[:2]):
                    stat = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()
                    self._last[int(cmdline.parent.name)] = int(stat[11]) + int(stat[12])

    def __enter__(self) -> ProxyCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self._last.values()) / os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """CPU seconds of meshssh-sshd and its reaped children (sftp-server, cat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(map(int, fields[11:15])) / os.sysconf("SC_CLK_TCK")


def run(argv: list[str], env: dict[str, str], stdin: Path | None = None) -> float:
    """Wall time of one run, which must succeed."""
    started = time.perf_counter()
    with (stdin or Path(os.devnull)).open("rb") as f:
        result = subprocess.run(argv, env=env, stdin=f, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{argv[:3]}... failed ({result.returncode}): {result.stderr.decode()[-800:]}")
    return elapsed


def check_copy(dest: Path, digest: str) -> None:
    h = hashlib.sha256()
    with dest.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if dest.stat().st_size != SIZE or h.hexdigest() != digest:
        sys.exit(f"{dest}: wrong copy ({dest.stat().st_size} bytes)")
    dest.unlink()


def fmt(values: list[float], digits: int = 1) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:8.{digits}f} (min {lo:.{digits}f}, max {hi:.{digits}f})"


async def main() -> int:
    if os.geteuid() != 0:
        sys.exit("run as root: the bench creates a user")
    with tempfile.TemporaryDirectory(prefix="scp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        setup = sshb.Setup(tmp)
        sshb.write_client_files(setup)
        natsd = await NatsServer.start(tmp / "nats")
        setup.uid = await asyncio.to_thread(os_users.add_user, setup.user, password="*")
        try:
            await sshb.publish_state(natsd, setup)
            sshb.start_meshssh(setup, natsd, "--enable-ssh-sftp")
            report = await asyncio.to_thread(bench, setup, tmp)
        finally:
            for proc in setup.procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
                if proc.poll() is None:
                    proc.kill()
            await natsd.stop()
            await asyncio.to_thread(sshb.remove_user, setup)
    print(json.dumps(report))
    return 0


def bench(setup: sshb.Setup, tmp: Path) -> dict[str, Any]:
    host_key = (tmp / "meshssh_host_key").read_bytes()
    public = asyncssh.import_private_key(host_key).export_public_key().decode().strip()
    state = tmp / "state"
    write_link(state, [PeerEntry(PEER, sshb.MESH_IP, public)], sshb.CLIENT_IP, setup.token(3600))
    launcher = str(write_launcher(tmp / "meshssh"))
    dropin = tmp / "meshssh.conf"
    install(render([PEER, sshb.MESH_IP], DropIn(launcher, state)), dropin)
    config = tmp / "ssh_config"
    config.write_text(f"Port {setup.meshssh_port}\nBatchMode yes\nInclude {dropin}\n")

    src = tmp / "payload.bin"
    with src.open("wb") as f:
        for _ in range(SIZE >> 20):
            f.write(os.urandom(1 << 20))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    home = Path(pwd.getpwnam(setup.user).pw_dir)
    dest = home / "copy.bin"
    env = setup.env()
    user_host = f"{setup.user}@{PEER}"
    scp_openssh = [
        "scp",
        "-q",
        "-F",
        "none",
        "-o",
        f"UserKnownHostsFile={setup.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=no",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        f"BindAddress={sshb.CLIENT_IP}",
        "-P",
        str(setup.meshssh_port),
        str(src),
        f"{setup.user}@{sshb.MESH_IP}:{dest}",
    ]
    variants = {
        "dropin": ["scp", "-q", "-F", str(config), str(src), f"{user_host}:{dest}"],
        "direct": [
            launcher,
            "ssh",
            "--state-dir",
            str(state),
            "-p",
            str(setup.meshssh_port),
            user_host,
            f"cat > {shlex.quote(str(dest))}",
        ],
        "openssh": scp_openssh,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    server: dict[str, list[float]] = {name: [] for name in variants}
    gib = SIZE / sshb.GIB
    proxy_cpu: list[float] = []
    order = list(variants)
    for name in order:  # warm-up: page cache, first connection
        run(variants[name], env, src if name == "direct" else None)
        dest.unlink(missing_ok=True)
    for i in range(ROUNDS):
        for name in order if i % 2 == 0 else order[::-1]:
            s0 = server_cpu(setup.meshssh_pid)
            with ProxyCpu() as cpu:
                times[name].append(run(variants[name], env, src if name == "direct" else None))
            time.sleep(0.3)  # sshd reaps the session's process
            server[name].append((server_cpu(setup.meshssh_pid) - s0) / gib)
            if name == "dropin":
                proxy_cpu.append(cpu.seconds / (SIZE / sshb.GIB))
            check_copy(dest, digest)
    rates = {name: [SIZE / t / 1e6 for t in ts] for name, ts in times.items()}
    vs_direct = [a / b for a, b in zip(rates["dropin"], rates["direct"], strict=True)]
    vs_openssh = [a / b for a, b in zip(rates["dropin"], rates["openssh"], strict=True)]
    label = f"{SIZE >> 20} MiB"
    print(f"scp {label} through the drop-in MB/s   {fmt(rates['dropin'])}")
    print(f"meshssh ssh 'cat > file' direct MB/s   {fmt(rates['direct'])}")
    print(f"OpenSSH scp without the proxy MB/s     {fmt(rates['openssh'])}")
    print(f"  drop-in / direct                     {fmt(vs_direct, 3)}")
    print(f"  drop-in / OpenSSH scp                {fmt(vs_openssh, 3)}")
    print(f"  proxy CPU s per GiB                  {fmt(proxy_cpu, 2)}")
    print("server CPU s per GiB (meshssh-sshd and sftp-server or cat):")
    for name in variants:
        print(f"  {name:8} {fmt(server[name], 2)}")
    return {
        "bench": "scp_throughput",
        "size_mb": SIZE >> 20,
        "rounds": ROUNDS,
        "scp_via_proxy_mbps": round(statistics.median(rates["dropin"]), 1),
        "direct_pipe_mbps": round(statistics.median(rates["direct"]), 1),
        "openssh_scp_mbps": round(statistics.median(rates["openssh"]), 1),
        "scp_proxy_vs_direct_ratio": round(statistics.median(vs_direct), 3),
        "scp_proxy_vs_direct_ratio_min": round(min(vs_direct), 3),
        "scp_proxy_vs_direct_ratio_max": round(max(vs_direct), 3),
        "scp_proxy_vs_openssh_ratio": round(statistics.median(vs_openssh), 3),
        "scp_proxy_vs_openssh_ratio_min": round(min(vs_openssh), 3),
        "scp_proxy_vs_openssh_ratio_max": round(max(vs_openssh), 3),
        "proxy_cpu_s_per_gib": round(statistics.median(proxy_cpu), 2),
        **{
            f"{name}_server_cpu_s_per_gib": round(statistics.median(v), 2)
            for name, v in server.items()
        },
    }


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
