"""The body of meshssh-policy: state, map engine, NATS endpoints, REST API and dashboard.

Start-up order: open the buckets (and, with ``--bus-keys``, the system connection that pushes
revocations); start the engine and wait until it has loaded the whole state and published
every changed map; apply ``--seed``; join the replicas that share out the maps
(:mod:`meshssh_policy.ownership`); then serve meta updates, browser terminal tickets
(:mod:`meshssh_policy.gateway_tickets`) and heartbeats on NATS, bind the
first-login consumer, serve the API (registration included) on ``--listen``, and declare
ready. ``/readyz`` also checks ``bus_keys`` (policy does not start without them: it signs
every map with ``<bus-keys>/map-signing.pem``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets

from meshssh_common import subjects
from meshssh_common.http_server import HttpServer
from meshssh_common.rpc import add_endpoint, add_subject_endpoint, start_micro, subscribe_typed
from meshssh_common.service import ServiceContext
from meshssh_common.wire import Heartbeat, MetaUpdate, TicketRedeem
from meshssh_policy.api import create_app
from meshssh_policy.management import Management
from meshssh_policy.ownership import Ownership
from meshssh_policy.recordings import open_recordings_stream
from meshssh_policy.seed import apply_seed, load_seed
from meshssh_policy.settings import PolicySettings

__all__ = ["serve"]


async def _share_maps(ctx: ServiceContext[PolicySettings], mgmt: Management) -> None:
    """Join the replicas that share out the maps (ownership.py), once the state is loaded."""
    lease = ctx.settings.replica_lease
    member = f"{ctx.settings.instance}-{os.getpid()}-{secrets.token_hex(3)}"
    ownership = Ownership(
        ctx.nc, member, log=ctx.log, metrics=mgmt.metrics, lease=lease, interval=lease / 3
    )
    mgmt.engine.owns = ownership.owns
    ownership.on_gained = mgmt.engine.recompute_soon
    await ownership.run(peers=lambda: set(mgmt.state.peers))


async def serve(ctx: ServiceContext[PolicySettings]) -> None:
    """Run one policy replica until cancelled."""
    settings = ctx.settings
    seed = load_seed(settings.seed) if settings.seed is not None else None
    mgmt = await Management.open(ctx.nc, settings, ctx.metrics, ctx.log)
    http = HttpServer(create_app(mgmt), settings.listen, setting="--listen")
    async with asyncio.TaskGroup() as tg:
        engine = tg.create_task(mgmt.engine.run())
        loaded = tg.create_task(mgmt.engine.loaded.wait())
        await asyncio.wait({engine, loaded}, return_when=asyncio.FIRST_COMPLETED)
        if engine.done():
            engine.result()  # the engine failed before loading: raise its error
        if seed is not None:
            await apply_seed(seed, mgmt.resources, ctx.log)
        tg.create_task(_share_maps(ctx, mgmt))
        svc = await start_micro(ctx.nc, "policy", description="meshssh management plane")
        m, log = ctx.metrics, ctx.log
        if mgmt.revocations is not None:
            tg.create_task(mgmt.revocations.run())
        ctx.checks["bus_keys"] = lambda: mgmt.bus is not None
        await add_endpoint(
            svc, "meta", subjects.POLICY_META, MetaUpdate, mgmt.registrar.meta, metrics=m, log=log
        )
        await add_subject_endpoint(
            svc,
            "gateway-ticket",
            subjects.GATEWAY_TICKET_ALL,
            TicketRedeem,
            mgmt.tickets.redeem,
            metrics=m,
            log=log,
            concurrency=16,
        )
        sub = await subscribe_typed(
            ctx.nc,
            subjects.HEARTBEAT_ALL,
            Heartbeat,
            mgmt.presence.on_heartbeat,
            name="heartbeat",
            metrics=m,
            log=log,
        )
        # The server must know our subscriptions before we say we are ready. nats-py's flush()
        # writes its PING straight to the socket, ahead of SUBs still queued for its flusher
        # task, so one flush proves nothing; by the time its PONG is back the SUBs are written.
        await ctx.nc.flush()
        await ctx.nc.flush()
        tg.create_task(mgmt.presence.run(lambda: set(mgmt.state.peers)))
        await mgmt.logins.open()  # a failure is logged; run() keeps trying
        await open_recordings_stream(mgmt.js, settings, ctx.log)
        tg.create_task(mgmt.logins.run())
        api = tg.create_task(http.serve())
        ctx.log.info("api listening", extra={"url": http.url})
        ctx.ready.set()
        try:
            await asyncio.Future()
        finally:
            http.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await asyncio.shield(api)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await svc.stop()
            if mgmt.revocations is not None:
                await mgmt.revocations.close()
