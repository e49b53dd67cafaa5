"""A real Prometheus server (Debian's package) for tests, scraping given targets on loopback.

Example::

    prom = await Prometheus.start(tmp_path, {"policy": ["127.0.0.1:9101"]})
    series = await prom.query("meshssh_policy_up")
    await prom.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

import httpx

from meshssh_testkit.ports import free_port
from meshssh_testkit.process import terminate

__all__ = ["Prometheus", "free_port", "prometheus_available"]


def prometheus_available() -> bool:
    """True when the ``prometheus`` binary is installed."""
    return shutil.which("prometheus") is not None


class Prometheus:
    """One Prometheus process with its own config and TSDB under a temp dir."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    @classmethod
    async def start(
        cls, root: Path, jobs: dict[str, list[str]], *, interval: str = "1s", timeout: float = 20
    ) -> Prometheus:
        """Start scraping ``jobs`` (job name → ``host:port`` targets) every ``interval``."""
        root.mkdir(parents=True, exist_ok=True)
        lines = [
            "global:",
            f"  scrape_interval: {interval}",
            f"  evaluation_interval: {interval}",
            "scrape_configs:",
        ]
        for job, targets in jobs.items():
            lines += [
                f"  - job_name: {job}",
                "    static_configs:",
                f"      - targets: [{', '.join(repr(t) for t in targets)}]",
            ]
        config = root / "prometheus.yml"
        config.write_text("\n".join(lines) + "\n")
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        prom = cls(proc, f"http://127.0.0.1:{port}")
        try:
            async with asyncio.timeout(timeout), httpx.AsyncClient() as client:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{prom.url}/-/ready")).status_code == 200:
                            return prom
                    if proc.returncode is not None:
                        raise RuntimeError(f"prometheus exited {proc.returncode}")
                    await asyncio.sleep(0.1)
        except BaseException:
            await prom.stop()
            raise

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait, SIGKILL on overrun."""
        await terminate(self.proc, timeout)
