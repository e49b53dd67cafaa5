"""A real Prometheus scrapes every service of a running stack (SPEC §8, issue 8), and every
metric the alert rules or the Grafana dashboard name exists in some service's registry.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import yaml

from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory, need_tool
from meshssh_testkit.prometheus import Prometheus, prometheus_available

SERVICES = ["policy", "authn", "sshd", "relay"]


def role(service: str) -> str:
    """The bus identity a service runs as here (peers' sshd and relay: admin for now)."""
    return service if service in ("policy", "authn") else "admin"


ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"\bmeshssh_[a-z]+_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def names_used_by_alerts_and_dashboard() -> set[str]:
    groups = yaml.safe_load((ROOT / "deploy/k8s/base/alerts.yaml").read_text())["spec"]["groups"]
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    dash = json.loads((ROOT / "deploy/k8s/base/dashboards/meshssh.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in _NAME.findall(e)}


def family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


async def test_prometheus_scrapes_every_service_and_queries_return_series(
    nats_server: NatsServer, services: ServiceFactory, tmp_path: Path
) -> None:
    need_tool(prometheus_available(), "prometheus (Debian package)")
    assert nats_server.keys is not None
    listen = {
        "policy": ["--listen", "127.0.0.1:0", "--bus-keys", str(nats_server.keys.dir)],
        "authn": [
            "--listen",
            "127.0.0.1:0",
            "--jwks-signing-key",
            str(nats_server.jwks_signing_key()),
        ],
        "relay": ["--peer-id", "p1", "--listen", "127.0.0.1:0"],
        "sshd": [
            "--peer-id",
            "p1",
            "--listen",
            "127.0.0.1:0",
            "--host-key",
            str(tmp_path / "ssh_host_ed25519_key"),
        ],
    }
    procs = {
        s: await services.start(f"meshssh-{s}", *nats_server.flags(role(s)), *listen.get(s, []))
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
    # Every metric an alert or a dashboard panel names is exposed by a running service.
    exposed: set[str] = set()
    async with httpx.AsyncClient() as client:
        for proc in procs.values():
            text = (await client.get(f"{proc.ops_url}/metrics")).text
            exposed |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    used = names_used_by_alerts_and_dashboard()
    assert len(used) >= 20
    missing = sorted(n for n in used if family(n) not in exposed and n not in exposed)
    assert not missing, f"named by alerts/dashboard but exposed by no service: {missing}"
