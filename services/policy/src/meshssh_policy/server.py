"""The body of meshssh-policy: open its durable state and serve until stopped."""

from __future__ import annotations

import asyncio

from meshssh_common import subjects
from meshssh_common.kv import open_bucket
from meshssh_common.rpc import start_micro
from meshssh_common.service import ServiceContext

__all__ = ["serve"]


async def serve(ctx: ServiceContext) -> None:
    """Open the state and map buckets, announce the service, then run until cancelled."""
    js = ctx.js
    for bucket in (*subjects.STATE_BUCKETS, subjects.BUCKET_NETMAPS):
        await open_bucket(js, bucket)
    svc = await start_micro(ctx.nc, "policy")
    ctx.ready.set()
    try:
        await asyncio.Future()
    finally:
        await svc.stop()
