"""What does reaching the SSH server through port 22 cost, compared with dialling 22022?

Two topologies, each with its own reference measured in the same run:

- proxy: meshssh-relay (proxy mode, a real process fed its map over NATS) listens on
  127.0.0.2:<relay>; the SSH server listens on 127.0.0.2:<sshd>; the OpenSSH client binds
  127.0.0.3. Reference: the same client dialling the server's port directly.
- nftables: two network namespaces on a veth (100.64.0.1 / 100.64.0.2); meshssh-relay in
  nftables mode installs its redirect in A; the client runs in B and dials 100.64.0.1:22.
  Reference: B dialling 100.64.0.1:22022. Skipped (figures null) where namespaces or nft
  cannot be used.

The SSH server is a real asyncssh server that reads the PROXY v2 header from the relay exactly
as meshssh-sshd does (meshssh_testkit.ssh_upstreams.ProxySshServer); its ``sink`` command reads
stdin to the end. It re-arms TCP_QUICKACK after each read, as platform-notes §4 recommends for
the SSH server: without it, a *direct* OpenSSH connection pays 40 ms delayed-ACK stalls that
the relay (which sets it on its client socket) hides, and the setup ratio would flatter the
relay instead of measuring it. It also runs meshssh-sshd's packet path
(``meshssh_common.ssh_packets``), so the server costs what meshssh-sshd costs.

Throughput: ``head -c SIZE /dev/zero | ssh -c aes128-gcm@openssh.com ... sink`` wall time
(MB = 10^6 bytes); setup: ``ssh ... true`` wall time. Paths alternate A/B; figures are
medians (min and max shown). Ratios are speed relative to direct (1.0 = as fast, lower =
slower), each the median of the ratios of adjacent A/B pairs (so the drifts of a busy machine
cancel): throughput path/direct, setup direct-time/path-time. The relay process's CPU per GiB
relayed is reported too.

Run: ``.venv/bin/python bench/relay_overhead.py`` (root for the nftables part).
Knobs: BENCH_SIZE_MB (default 256), BENCH_ROUNDS (7), BENCH_SETUP_ROUNDS (20),
BENCH_STOCK_SERVER=1 (the stand-in server on asyncssh's own packet path, as before issue 12:
a slower server, against which the relay's fixed cost weighs less).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import asyncssh.connection
import nats

from meshssh_common import ssh_packets, subjects
from meshssh_common.kv import open_bucket
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.netmaps import make_map, put_map
from meshssh_testkit.netns import NetNs, PortForward, netns_unavailable_reason, veth_pair
from meshssh_testkit.openssh import OpenSSH
from meshssh_testkit.process import ServiceProcess, script
from meshssh_testkit.signing import write_test_pins
from meshssh_testkit.ssh_upstreams import ProxySshServer

SIZE = int(os.environ.get("BENCH_SIZE_MB", "256")) * 1024 * 1024
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
SETUP_ROUNDS = int(os.environ.get("BENCH_SETUP_ROUNDS", "20"))
USER = getpass.getuser()
A_IP, B_IP = "100.64.0.1", "100.64.0.2"

Runner = Callable[[str, int, str], Sequence[str]]  # (host, port, command) -> argv


def _tune_ssh_server() -> None:
    """TCP_QUICKACK after every read of an asyncssh connection (see the module docstring)."""
    original = asyncssh.connection.SSHConnection.data_received

    def data_received(
        self: asyncssh.connection.SSHConnection, data: bytes, datatype: object = None
    ) -> None:
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        original(self, data, datatype)

    asyncssh.connection.SSHConnection.data_received = data_received  # type: ignore[method-assign]


async def timed(argv: Sequence[str], stdin_cmd: str = "") -> float:
    """Wall time of one run; raises when it fails."""
    if stdin_cmd:
        argv = ["sh", "-c", f"{stdin_cmd} | exec " + " ".join(_quote(a) for a in argv)]
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(300):
        out, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[-1]} failed ({proc.returncode}): {err.decode()}")
    if stdin_cmd and int(out.split()[-1]) != SIZE:
        raise RuntimeError(f"sink got {out!r}, expected {SIZE} bytes")
    return elapsed


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds a process has used so far (0 when there is none)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def compare(
    run: Runner, host: str, direct_port: int, path_port: int, relay_pid: int | None = None
) -> dict[str, object]:
    """Alternate direct and path: throughput (MB/s) and setup (ms) for both."""
    thr: dict[str, list[float]] = {"direct": [], "path": []}
    setup: dict[str, list[float]] = {"direct": [], "path": []}
    ports = {"direct": direct_port, "path": path_port}
    for port in ports.values():  # warm-up: page cache, known hosts
        await timed(run(host, port, "true"))
    relay_cpu = 0.0
    for i in range(ROUNDS):
        for name in ("direct", "path") if i % 2 == 0 else ("path", "direct"):
            before = cpu_seconds(relay_pid) if name == "path" else 0.0
            seconds = await timed(run(host, ports[name], "sink"), f"head -c {SIZE} /dev/zero")
            if name == "path":
                relay_cpu += cpu_seconds(relay_pid) - before
            thr[name].append(SIZE / seconds / 1e6)
    for i in range(SETUP_ROUNDS):
        for name in ("direct", "path") if i % 2 == 0 else ("path", "direct"):
            setup[name].append(await timed(run(host, ports[name], "true")) * 1000)
    # Ratio per adjacent A/B pair, then the median: slow drifts of a busy machine cancel out.
    pairs = [p / d for d, p in zip(thr["direct"], thr["path"], strict=True)]
    setup_pairs = [d / p for d, p in zip(setup["direct"], setup["path"], strict=True)]
    return {
        "throughput": thr,
        "setup": setup,
        "throughput_ratio": statistics.median(pairs),
        "setup_ratio": statistics.median(setup_pairs),
        "relay_cpu_s_per_gib": relay_cpu / (ROUNDS * SIZE / 2**30) if relay_pid else None,
    }


def ssh_runner(client: OpenSSH, prefix: Sequence[str] = (), bind: str = "") -> Runner:
    def run(host: str, port: int, command: str) -> Sequence[str]:
        argv = [
            *prefix,
            "ssh",
            *client.base_options(),
            "-c",
            "aes128-gcm@openssh.com",
            "-o",
            "Compression=no",
            "-p",
            str(port),
        ]
        if bind:
            argv += ["-b", bind]
        return [*argv, f"{USER}@{host}", command]

    return run


def trust(client: OpenSSH, host: str, ports: Sequence[int], key: str) -> None:
    with client.known_hosts.open("a") as f:
        for port in ports:
            f.write(f"{host if port == 22 else f'[{host}]:{port}'} {key}\n")


async def wait_log(proc: ServiceProcess, pattern: str, timeout: float = 15) -> re.Match[str]:
    async with asyncio.timeout(timeout):
        while True:
            for line in list(proc.log):
                if m := re.search(pattern, line):
                    return m
            if proc.proc.returncode is not None:
                raise RuntimeError(f"relay exited:\n{proc.output()}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def nats_with_bucket(root: Path) -> AsyncIterator[tuple[NatsServer, nats.NATS]]:
    server = await NatsServer.start(root / "nats")
    nc = await server.connect()
    await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    try:
        yield server, nc
    finally:
        await nc.close()
        await server.stop()


async def bench_proxy(root: Path, client: OpenSSH) -> dict[str, object]:
    async with nats_with_bucket(root) as (server, nc):
        await put_map(nc, make_map(1))
        relay_socket = root / "relay.sock"  # root is a short /tmp dir: sun_path fits
        sshd = ProxySshServer("127.0.0.2", unix_path=relay_socket, client_key=client.public_key)
        await sshd.start()
        relay = await ServiceProcess.start(
            "meshssh-relay",
            *server.flags(),  # admin until the relay reads its map by direct get
            "--peer-id",
            "p1",
            "--listen",
            "127.0.0.2:0",
            "--sshd",
            f"127.0.0.2:{sshd.port}",
            "--sshd-socket",
            str(relay_socket),
            "--pins",
            str(write_test_pins(root / "pins")),
        )
        try:
            await relay.wait_ready()
            port = int((await wait_log(relay, r"relay listening .*address=\S+:(\d+)"))[1])
            trust(client, "127.0.0.2", [sshd.port, port], sshd.public_line)
            return await compare(
                ssh_runner(client, bind="127.0.0.3"), "127.0.0.2", sshd.port, port, relay.proc.pid
            )
        finally:
            await relay.stop()
            await sshd.stop()


async def bench_nftables(root: Path, client: OpenSSH) -> dict[str, object] | str:
    reason = netns_unavailable_reason()
    if reason is None and shutil.which("nft") is None:
        reason = "nft is not installed"
    if reason is not None:
        return reason
    async with nats_with_bucket(root) as (server, nc):
        a, b = await NetNs.create("ba"), await NetNs.create("bb")
        forward = sshd = relay = None
        try:
            if_a, _ = await veth_pair(a, f"{A_IP}/10", b, f"{B_IP}/10")
            forward = await PortForward.start(a, ("127.0.0.1", server.port))
            await put_map(
                nc, make_map(1, mesh_ip=A_IP, mesh_prefix="100.64.0.0/10", sources=[f"{B_IP}/32"])
            )
            sshd = ProxySshServer(A_IP, client_key=client.public_key, sock=a.listener(A_IP, 22022))
            await sshd.start()
            proc = await asyncio.create_subprocess_exec(
                *a.argv(
                    script("meshssh-relay"),
                    "--mode",
                    "nftables",
                    "--mesh-interface",
                    if_a,
                    "--peer-id",
                    "p1",
                    "--listen",
                    f"{A_IP}:22",
                    "--sshd",
                    f"{A_IP}:22022",
                    "--pins",
                    str(write_test_pins(root / "pins")),
                    "--nats-url",
                    f"nats://127.0.0.1:{forward.port}",
                    "--nats-creds",
                    str(server.creds("admin")),
                    "--ops-listen",
                    "127.0.0.1:0",
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            relay = ServiceProcess(proc, "meshssh-relay")
            await wait_log(relay, "redirect installed")
            trust(client, A_IP, [22, 22022], sshd.public_line)
            return await compare(ssh_runner(client, prefix=b.argv()), A_IP, 22022, 22)
        finally:
            if relay is not None:
                await relay.stop()
            if sshd is not None:
                await sshd.stop()
            if forward is not None:
                await forward.stop()
            await a.delete()
            await b.delete()


def row(label: str, values: list[float], unit: str) -> str:
    return (
        f"  {label:<28} median {statistics.median(values):9.1f} {unit:<5} "
        f"min {min(values):9.1f}  max {max(values):9.1f}"
    )


def report(name: str, result: dict[str, object] | str) -> None:
    print(f"{name}:")
    if isinstance(result, str):
        print(f"  skipped: {result}")
        return
    thr = result["throughput"]
    setup = result["setup"]
    assert isinstance(thr, dict)
    assert isinstance(setup, dict)
    print(row("throughput direct (22022)", thr["direct"], "MB/s"))
    print(row("throughput via port 22", thr["path"], "MB/s"))
    print(row("setup direct (22022)", setup["direct"], "ms"))
    print(row("setup via port 22", setup["path"], "ms"))
    print(
        f"  ratios (1.0 = as fast as direct): throughput {result['throughput_ratio']:.3f}, "
        f"setup {result['setup_ratio']:.3f} (median of per-pair ratios)"
    )
    if result.get("relay_cpu_s_per_gib") is not None:
        print(f"  relay process CPU: {result['relay_cpu_s_per_gib']:.2f} s per GiB relayed")


def figures(prefix: str, result: dict[str, object] | str) -> dict[str, object]:
    if isinstance(result, str):
        return {
            f"{prefix}_throughput_ratio": None,
            f"{prefix}_setup_ratio": None,
            f"{prefix}_skipped": result,
        }
    thr, setup = result["throughput"], result["setup"]
    assert isinstance(thr, dict)
    assert isinstance(setup, dict)
    return {
        f"{prefix}_throughput_ratio": round(float(result["throughput_ratio"]), 3),  # type: ignore[arg-type]
        f"{prefix}_setup_ratio": round(float(result["setup_ratio"]), 3),  # type: ignore[arg-type]
        f"{prefix}_direct_mbps": round(statistics.median(thr["direct"]), 1),
        f"{prefix}_path_mbps": round(statistics.median(thr["path"]), 1),
        f"{prefix}_direct_setup_ms": round(statistics.median(setup["direct"]), 1),
        f"{prefix}_path_setup_ms": round(statistics.median(setup["path"]), 1),
        f"{prefix}_relay_cpu_s_per_gib": (
            round(float(result["relay_cpu_s_per_gib"]), 2)  # type: ignore[arg-type]
            if result.get("relay_cpu_s_per_gib") is not None
            else None
        ),
    }


async def main() -> int:
    if shutil.which("ssh") is None:
        print("ssh (OpenSSH client) is required", file=sys.stderr)
        return 2
    if not os.environ.get("BENCH_STOCK_SERVER"):
        ssh_packets.install()  # first: _tune_ssh_server wraps the data_received this installs
    _tune_ssh_server()
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        root = Path(tmp)
        client = OpenSSH(root / "client")
        print(
            f"relay overhead: {SIZE // (1024 * 1024)} MiB x {ROUNDS} rounds, "
            f"{SETUP_ROUNDS} setup rounds, aes128-gcm, alternating direct/path"
        )
        proxy = await bench_proxy(root / "proxy", client)
        report("proxy mode (userspace relay)", proxy)
        kernel = await bench_nftables(root / "nft", client)
        report("nftables mode (kernel redirect, namespaces)", kernel)
    print(
        json.dumps(
            {"bench": "relay_overhead", **figures("proxy", proxy), **figures("nftables", kernel)}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
