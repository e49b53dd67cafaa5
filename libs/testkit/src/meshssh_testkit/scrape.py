"""Read a service's Prometheus metrics from its ops URL, and wait for one to reach a value.

Example::

    await wait_metric(proc.ops_url, 'meshssh_relay_map_serial', 2)
    refused = await read_metric(proc.ops_url, 'meshssh_relay_connections_total{result="no_rule"}')
"""

from __future__ import annotations

import asyncio

import httpx

__all__ = ["read_metric", "wait_metric"]


async def read_metric(ops_url: str, sample: str) -> float | None:
    """The value of the sample named exactly ``sample`` (with its labels), or None."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{ops_url}/metrics", timeout=5)).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_metric(ops_url: str, sample: str, value: float, *, timeout: float = 10) -> None:
    """Poll until ``sample`` equals ``value``.

    Raises:
        TimeoutError: it did not within ``timeout`` (the message has the last value).
    """
    last: float | None = None
    try:
        async with asyncio.timeout(timeout):
            while (last := await read_metric(ops_url, sample)) != value:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"{sample} is {last}, expected {value}") from None
