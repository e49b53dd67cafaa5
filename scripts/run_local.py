"""`make run`: start the whole system locally on embedded defaults, print where it listens.

Starts nats-server with JetStream (store under .run/nats), then every service as its own
process, waits until each answers /readyz, writes .run/endpoints.json, and stops everything
on Ctrl-C (SIGINT) or SIGTERM, leaving no process behind.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from meshssh_testkit import NatsServer, ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"
SERVICES = ["meshssh-policy", "meshssh-authn", "meshssh-sshd", "meshssh-relay"]


async def main() -> int:
    """Start everything, print the endpoints, and stop it all on a signal."""
    RUN.mkdir(exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nats = await NatsServer.start(RUN / "nats")
    procs: list[ServiceProcess] = []
    try:
        # A relay serves one peer; until the demo peers' agents start their own, this one
        # stands for a peer "standalone" (it refuses every connection: that peer has no map).
        extra = {"meshssh-relay": ["--peer-id", "standalone", "--listen", "127.0.0.1:0"]}
        for name in SERVICES:
            proc = await ServiceProcess.start(
                name, "--nats-url", nats.url, "--log-format", "json", *extra.get(name, [])
            )
            procs.append(proc)
        for proc in procs:
            await proc.wait_ready(timeout=30)
        endpoints = {
            "nats_url": nats.url,
            "ops": {p.name.removeprefix("meshssh-"): p.ops_url for p in procs},
        }
        (RUN / "endpoints.json").write_text(json.dumps(endpoints, indent=2) + "\n")
        print(f"meshssh is running (state in {RUN})")
        print(f"  nats-server   {nats.url}  (JetStream store {RUN / 'nats'})")
        for proc in procs:
            print(f"  {proc.name:<15} ops {proc.ops_url}  (/healthz /readyz /metrics)")
        print(f"Endpoints written to {RUN / 'endpoints.json'}. Press Ctrl-C to stop.")
        sys.stdout.flush()
        await stop.wait()
    finally:
        print("stopping...", file=sys.stderr)
        for proc in reversed(procs):
            code = await proc.stop()
            if code not in (0, -signal.SIGTERM):
                print(f"{proc.name} exited {code}:\n{proc.output()}", file=sys.stderr)
        await nats.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
