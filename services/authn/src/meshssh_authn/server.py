"""The body of meshssh-authn: open the JWKS bucket and serve until stopped."""

from __future__ import annotations

import asyncio

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_common.rpc import start_micro
from meshssh_common.service import ServiceContext

__all__ = ["serve"]


async def serve(ctx: ServiceContext) -> None:
    """Open ``meshssh-jwks``, announce the service, then run until cancelled."""
    await open_bucket(ctx.js, subjects.BUCKET_JWKS)
    svc = await start_micro(ctx.nc, "authn")
    ctx.ready.set()
    try:
        await asyncio.Future()
    finally:
        await svc.stop()
