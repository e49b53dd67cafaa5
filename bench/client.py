"""How fast does the client start, and what does the OpenSSH proxy cost?

Against a real SSH peer on the loopback mesh (the asyncssh peer of the client tests, on
127.0.0.2, with this peer on 127.0.0.3), in interleaved rounds (the order rotates each round,
after one warm-up of each; min, median and max printed):

- ``proxy_first_byte``: from starting ``meshssh ssh proxy`` to its first byte on stdout (its
  SSH banner, the moment OpenSSH can start talking); reference: a bare Python start;
- ``meshssh ssh host true``: wall time, start to exit (the direct client);
- ``ssh host true`` through the drop-in, as the agent keeps it (the server's marker present:
  ``test -f`` answers the Match line, then the proxy): wall time, and its ratio to
  ``meshssh ssh host true`` in the same round (issue 12 aims at a p50 of 250 ms);
- the same without a marker (``meshssh ssh detect`` runs first, as before issue 12);
- scp upload of 256 MiB through the proxy, against piping the same file through
  ``meshssh ssh host 'cat > file'`` directly: throughput ratio.

The agent is stood in for by the tests' static link (peers, token), and the bench writes the
marker the agent would keep; everything else is real. The project's modules are byte-compiled
first, as ``pip install`` does: with ``PYTHONDONTWRITEBYTECODE`` set (as on the machines these
figures come from) an editable checkout would otherwise compile some 25 modules from source in
every process, about 30 ms a start that no installed meshssh pays.
Run: ``.venv/bin/python bench/client.py`` (a minute or two).
"""

from __future__ import annotations

import asyncio
import compileall
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cli" / "tests"))

from ssh_peer import start_peer  # noqa: E402
from static_link import write_launcher, write_link  # noqa: E402

from meshssh_agent.peers import PeerEntry  # noqa: E402
from meshssh_agent.server_marks import write_marks  # noqa: E402
from meshssh_agent.ssh_config import DropIn, install, render  # noqa: E402

ROUNDS = 9
SCP_ROUNDS = 5
SCP_BYTES = 256 * 1024 * 1024
TOKEN = "bench-token"


async def run(*argv: str, stdin: int | None = None) -> float:
    """Seconds from start to exit of ``argv`` (which must succeed)."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-500:]}")
    return elapsed


async def first_byte(*argv: str) -> float:
    """Seconds from start of ``argv`` to its first byte on stdout; then it is stopped."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    got = await proc.stdout.read(1)
    elapsed = time.perf_counter() - started
    proc.stdin.close()
    try:
        async with asyncio.timeout(5):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
    if not got:
        raise RuntimeError(f"{argv} wrote nothing")
    return elapsed


async def interleave(
    measures: Sequence[Callable[[], Awaitable[float]]], rounds: int
) -> list[list[float]]:
    """Run each measure once per round, the order rotated every round, after one warm-up."""
    for measure in measures:
        await measure()
    results: list[list[float]] = [[] for _ in measures]
    for i in range(rounds):
        for k in range(len(measures)):
            j = (i + k) % len(measures)
            results[j].append(await measures[j]())
    return results


def row(name: str, values: list[float], unit: str, scale: float) -> str:
    med = statistics.median(values) * scale
    return (
        f"{name:<46} {med:>9.2f} {min(values) * scale:>9.2f} {max(values) * scale:>9.2f} {unit}\n"
    )


async def bench(work: Path) -> dict[str, object]:
    peer = await start_peer(TOKEN, host="127.0.0.2")
    try:
        state = work / "state"
        write_link(
            state, [PeerEntry("demo-server", "127.0.0.2", peer.host_key_line)], "127.0.0.3", TOKEN
        )
        launcher = str(write_launcher(work / "meshssh"))
        marks = state / "ssh-servers"
        write_marks(marks, [(peer.port, "demo-server")])  # what the agent keeps
        hosts = ["demo-server", "127.0.0.2"]
        config, plain_config = work / "ssh_config", work / "ssh_config_no_marker"
        for conf, dropin in (
            (config, DropIn(launcher, state, marks)),
            (plain_config, DropIn(launcher, state)),
        ):
            install(render(hosts, dropin), conf.with_suffix(".dropin"))
            conf.write_text(f"Port {peer.port}\nBatchMode yes\nInclude {conf}.dropin\n")
        direct = [launcher, "ssh", "--state-dir", str(state), "-p", str(peer.port), "demo-server"]
        proxy = [launcher, "ssh", "proxy", "--state-dir", str(state), "demo-server", str(peer.port)]

        proxy_fb, python_fb = await interleave(
            [
                lambda: first_byte(*proxy),
                lambda: first_byte(sys.executable, "-c", "import sys; sys.stdout.write('x')"),
            ],
            ROUNDS,
        )
        via_proxy, direct_true, via_detect = await interleave(
            [
                lambda: run("ssh", "-F", str(config), "demo-server", "true"),
                lambda: run(*direct, "true"),
                lambda: run("ssh", "-F", str(plain_config), "demo-server", "true"),
            ],
            ROUNDS,
        )

        src = work / "payload.bin"
        src.write_bytes(os.urandom(SCP_BYTES))
        dest = work / "dest.bin"

        async def scp() -> float:
            return await run("scp", "-q", "-F", str(config), str(src), f"demo-server:{dest}")

        async def pipe() -> float:
            with src.open("rb") as f:
                return await run(*direct, f"cat > {dest}", stdin=f.fileno())

        scp_times, pipe_times = await interleave([scp, pipe], SCP_ROUNDS)
    finally:
        await peer.stop()

    mb = SCP_BYTES / 1e6
    scp_rates = [mb / t for t in scp_times]
    pipe_rates = [mb / t for t in pipe_times]
    ratios = [s / p for s, p in zip(scp_rates, pipe_rates, strict=True)]
    overheads = [p - d for p, d in zip(via_proxy, direct_true, strict=True)]
    true_ratios = [p / d for p, d in zip(via_proxy, direct_true, strict=True)]
    out = sys.stdout
    out.write(f"{'measure':<46} {'median':>9} {'min':>9} {'max':>9}\n")
    out.write(row("meshssh ssh proxy: start to first byte", proxy_fb, "ms", 1000))
    out.write(row("  reference: python start to first byte", python_fb, "ms", 1000))
    out.write(row("meshssh ssh host true (direct)", direct_true, "ms", 1000))
    out.write(row("ssh host true (drop-in: marker + proxy)", via_proxy, "ms", 1000))
    out.write(row("  drop-in / direct (same round)", true_ratios, "x", 1))
    out.write(row("  proxy overhead (ssh - meshssh ssh)", overheads, "ms", 1000))
    out.write(row("ssh host true (drop-in, no marker: detect)", via_detect, "ms", 1000))
    out.write(row("scp 256 MiB through the proxy", scp_rates, "MB/s", 1))
    out.write(row("meshssh ssh 'cat > file' direct", pipe_rates, "MB/s", 1))
    out.write(row("  scp via proxy / direct", ratios, "x", 1))
    out.write(
        f"({ROUNDS} interleaved rounds, {SCP_ROUNDS} for scp; load {os.getloadavg()[0]:.1f})\n"
    )
    med = statistics.median
    return {
        "bench": "client",
        "proxy_first_byte_p50_ms": round(med(proxy_fb) * 1000, 1),
        "python_first_byte_p50_ms": round(med(python_fb) * 1000, 1),
        "ssh_true_direct_p50_ms": round(med(direct_true) * 1000, 1),
        "ssh_true_via_proxy_p50_ms": round(med(via_proxy) * 1000, 1),
        "ssh_true_via_proxy_min_ms": round(min(via_proxy) * 1000, 1),
        "ssh_true_via_proxy_max_ms": round(max(via_proxy) * 1000, 1),
        "ssh_true_via_proxy_no_marker_p50_ms": round(med(via_detect) * 1000, 1),
        "dropin_vs_direct_ratio": round(med(true_ratios), 3),
        "proxy_overhead_p50_ms": round(med(overheads) * 1000, 1),
        "scp_via_proxy_mbps": round(med(scp_rates), 1),
        "direct_pipe_mbps": round(med(pipe_rates), 1),
        "scp_proxy_vs_direct_ratio": round(med(ratios), 3),
    }


def precompile() -> None:
    """Byte-compile the checkout's modules (``__pycache__``, ignored by git) as an install would."""
    for folder in ("cli/src", "libs/common/src", "cli/tests"):
        compileall.compile_dir(ROOT / folder, quiet=2)


def main() -> int:
    precompile()
    with tempfile.TemporaryDirectory(prefix="meshssh-bench-client-") as tmp:
        figures = asyncio.run(bench(Path(tmp)))
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
