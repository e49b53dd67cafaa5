"""The ops endpoints every service serves: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` is 200 while the process runs. ``/readyz`` is 200 only while the service is
connected to NATS and has declared itself ready; its body says which check failed.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["ReadinessCheck", "ops_app"]

ReadinessCheck = Callable[[], dict[str, bool]]
"""Returns named checks, e.g. ``{"nats": True, "serving": False}``; ready when all are true."""


def ops_app(registry: CollectorRegistry, readiness: ReadinessCheck) -> Starlette:
    """Build the ops ASGI app over ``registry`` and ``readiness``."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
