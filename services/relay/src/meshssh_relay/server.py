"""The body of meshssh-relay: connect and serve until stopped."""

from __future__ import annotations

import asyncio

from meshssh_common.service import ServiceContext

__all__ = ["serve"]


async def serve(ctx: ServiceContext) -> None:
    """Declare readiness once connected, then run until cancelled."""
    ctx.ready.set()
    await asyncio.Future()
