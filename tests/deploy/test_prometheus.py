"""A real Prometheus scrapes every service of a running stack (SPEC §8, issue 8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.prometheus import Prometheus, prometheus_available

SERVICES = ["policy", "authn", "sshd", "relay"]


async def test_prometheus_scrapes_every_service_and_queries_return_series(
    nats_url: str, services: ServiceFactory, tmp_path: Path
) -> None:
    need_tool(prometheus_available(), "prometheus (Debian package)")
    listen = {
        "policy": ["--listen", "127.0.0.1:0"],
        "authn": ["--listen", "127.0.0.1:0"],
        "relay": ["--peer-id", "p1", "--listen", "127.0.0.1:0"],
        "sshd": ["--peer-id", "p1", "--listen", "127.0.0.1:0",
                 "--host-key", str(tmp_path / "ssh_host_ed25519_key")],
    }  # fmt: skip
    procs = {
        s: await services.start(f"meshssh-{s}", "--nats-url", nats_url, *listen.get(s, []))
        for s in SERVICES
    }
    jobs = {s: [p.ops_url.removeprefix("http://")] for s, p in procs.items()}
    prom = await Prometheus.start(tmp_path / "prom", jobs)
    try:
        async with asyncio.timeout(60):
            while True:
                up = await prom.query("up == 1")
                if {r["metric"]["job"] for r in up} == set(SERVICES):
                    break
                await asyncio.sleep(0.5)
        for service in SERVICES:
            series = await prom.query(f"meshssh_{service}_nats_connected")
            assert series, f"no series for {service}"
            assert series[0]["value"][1] == "1"
    finally:
        await prom.stop()
