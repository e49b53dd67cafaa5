"""The body of meshssh-authn: wire the provider (embedded or external), mirror and broker.

Startup order: load the JWKS signing key (a bad one exits 2); open the buckets; load (or
create) the exchange key; with the embedded provider, bind its HTTP port (so the issuer
URL is known) and build it; fetch and publish the keys once; register the NATS endpoints;
then run the HTTP server, the scheduled mirror and the key ring watcher until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from meshssh_authn.auth_codes import AuthCodes
from meshssh_authn.authn_metrics import AuthnMetrics
from meshssh_authn.code_attempts import CodeAttempts
from meshssh_authn.device_broker import DeviceBroker, DevicePeer
from meshssh_authn.device_grants import DeviceGrant, DeviceGrants, DevicePointer
from meshssh_authn.embedded_provider import EmbeddedProvider, ProviderConfig
from meshssh_authn.exchange_keys import ExchangeKeys, ExchangeKeySet
from meshssh_authn.jwks_mirror import FetchLease, JwksMirror, MirrorTiming
from meshssh_authn.jwks_refresh import JwksRefresher
from meshssh_authn.key_ring import KeyRing
from meshssh_authn.key_sources import EmbeddedSource, ExternalConfig, ExternalSource, KeySource
from meshssh_authn.provider_app import install_routes
from meshssh_authn.settings import AuthnSettings
from meshssh_authn.signing_keys import KeySet, RotationPolicy
from meshssh_authn.token_exchange import PeerBuckets, TokenExchanger
from meshssh_authn.token_issuer import TokenIssuer
from meshssh_authn.users import UsersFile
from meshssh_common import codec, subjects
from meshssh_common.errors import WireError
from meshssh_common.http_server import HttpServer
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.rpc import add_endpoint, add_subject_endpoint, start_micro, subscribe_typed
from meshssh_common.service import ServiceContext
from meshssh_common.signed_doc import Refused, Signer, Verifier
from meshssh_common.wire import (
    DevicePollRequest,
    DeviceStartRequest,
    JwksMissed,
    JwksRefreshRequest,
    JwksSnapshot,
    TokenExchangeRequest,
)

__all__ = ["serve"]


async def _devices_bucket(js: JetStreamContext, ttl: float) -> KeyValue:
    """The device-grant bucket; its TTL forgets grants some time after they expire."""
    return await open_bucket(js, subjects.BUCKET_AUTHN_DEVICES, ttl=ttl)


async def _embedded(
    ctx: ServiceContext[AuthnSettings],
    settings: AuthnSettings,
    metrics: AuthnMetrics,
    state: KeyValue,
    server: HttpServer,
    app: FastAPI,
) -> EmbeddedProvider:
    issuer = (settings.public_url or server.url).rstrip("/")
    host = server.host_port[0]
    if not settings.public_url and host in ("0.0.0.0", "::"):
        ctx.log.warning("listening on all addresses: set --public-url to a reachable URL")
    policy = RotationPolicy(
        period=settings.key_rotation,
        publish_lead=settings.key_publish_lead,
        token_ttl=settings.token_ttl,
        skew=settings.clock_skew,
    )
    ring = KeyRing(
        TypedKV(state, KeySet),
        policy,
        settings.signing_alg,
        log=ctx.log,
        on_rotation=metrics.key_rotations.inc,
    )
    devices = await _devices_bucket(ctx.js, settings.device_code_ttl * 2.0)
    grants = DeviceGrants(
        TypedKV(devices, DeviceGrant),
        TypedKV(devices, DevicePointer),
        ttl=settings.device_code_ttl,
        interval=settings.device_poll_interval,
    )
    tokens = TokenIssuer(
        ring,
        issuer=issuer,
        audiences=settings.audience,
        client_id=settings.client_id,
        ttl=settings.token_ttl,
    )
    if settings.users_file is None:
        ctx.log.warning("no --users-file: nobody can log in to the embedded provider")
    config = ProviderConfig(
        issuer=issuer,
        client_id=settings.client_id,
        audiences=settings.audience,
        scopes=settings.scope,
        use_id_token=settings.use_id_token,
        user_id_claim=settings.user_id_claim,
        require_email_verified=settings.require_email_verified,
        max_token_age=settings.max_token_age,
        clock_skew=settings.clock_skew,
        signing_alg=settings.signing_alg,
        jwks_max_age=int(min(300.0, settings.key_publish_lead)),
    )
    provider = EmbeddedProvider(
        config,
        ring=ring,
        grants=grants,
        tokens=tokens,
        users=UsersFile(settings.users_file) if settings.users_file else None,
        metrics=metrics,
        log=ctx.log,
        auth_codes=AuthCodes(
            client_id=settings.dashboard_client_id, redirect_uris=settings.dashboard_redirect_uri
        ),
        code_attempts=CodeAttempts(
            per_source=settings.device_code_misses_per_source,
            overall=settings.device_code_misses,
        ),
    )
    install_routes(app, provider)
    await ring.ensure()
    return provider


async def serve(ctx: ServiceContext[AuthnSettings]) -> None:
    """Run authn until cancelled (see the module docstring for the order of things)."""
    settings = ctx.settings
    metrics = AuthnMetrics(ctx.metrics)

    assert settings.jwks_signing_key is not None  # the settings refuse to start without it
    signer = Signer.load(settings.jwks_signing_key, kind="jwks")  # ConfigError: exit 2

    def bad_value(key: str, e: WireError) -> None:
        if isinstance(e, Refused):
            ctx.metrics.signed_doc_refused.labels(kind="jwks", reason=e.why).inc()
        else:
            ctx.metrics.bad_messages.labels(endpoint="kv", reason="invalid").inc()
        ctx.log.warning("bad KV value ignored", extra={"key": key, "error": str(e)})

    snapshots = TypedKV(
        await open_bucket(ctx.js, subjects.BUCKET_JWKS),
        JwksSnapshot,
        on_bad_value=bad_value,
        signer=signer,
        verifier=Verifier("jwks", signer.pins),
    )
    state = await open_bucket(ctx.js, subjects.BUCKET_AUTHN)
    exchange_keys = ExchangeKeys(
        TypedKV(state, ExchangeKeySet, on_bad_value=bad_value), log=ctx.log
    )
    await exchange_keys.ensure()
    timeout = httpx.Timeout(settings.provider_timeout)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        server: HttpServer | None = None
        provider: EmbeddedProvider | None = None
        source: KeySource
        if settings.embedded:
            app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
            server = HttpServer(app, settings.listen, setting="--listen")
            provider = await _embedded(ctx, settings, metrics, state, server, app)
            source = EmbeddedSource(provider)
        else:
            source = ExternalSource(
                ExternalConfig(
                    issuer=settings.issuer,
                    jwks_url=settings.jwks_url,
                    client_id=settings.client_id,
                    scopes=settings.scope,
                    audiences=settings.audience,
                    use_id_token=settings.use_id_token,
                    user_id_claim=settings.user_id_claim,
                    require_email_verified=settings.require_email_verified,
                    max_token_age=settings.max_token_age,
                    clock_skew=settings.clock_skew,
                ),
                http,
            )
        timing = MirrorTiming(
            default_interval=settings.jwks_refresh_interval,
            min_forced_interval=settings.jwks_refresh_min_interval,
            retry_interval=settings.jwks_retry_interval,
            min_interval=min(30.0, settings.jwks_refresh_interval),
            kid_interval=settings.jwks_refresh_kid_interval,
        )
        mirror = JwksMirror(
            source,
            snapshots,
            TypedKV(state, FetchLease, on_bad_value=bad_value),
            timing,
            metrics=metrics,
            log=ctx.log,
            instance=settings.instance,
            exchange=exchange_keys,
            exchange_issuer=settings.exchange_issuer,
        )
        exchange_keys.on_change = mirror.keys_changed
        exchanger = TokenExchanger(
            snapshots,
            exchange_keys,
            issuer=settings.exchange_issuer,
            buckets=PeerBuckets(settings.exchange_rate, settings.exchange_burst),
            metrics=metrics,
            log=ctx.log,
        )
        refresher = JwksRefresher(mirror, timing, metrics=metrics, log=ctx.log)
        broker = DeviceBroker(
            embedded=provider,
            snapshots=snapshots,
            peers=TypedKV(
                await _devices_bucket(ctx.js, settings.device_code_ttl * 2.0), DevicePeer
            ),
            exchanger=exchanger,
            http=http,
            metrics=metrics,
            log=ctx.log,
        )
        if provider is not None:
            provider.ring.on_change = mirror.keys_changed

        async def announce_missed(kids: tuple[str, ...], ttl: float) -> None:
            missed = JwksMissed(kids=kids, ttl=ttl, sender=settings.instance)
            await ctx.nc.publish(subjects.AUTHN_JWKS_MISSED, codec.encode(missed))

        async def on_missed(missed: JwksMissed, _msg: Msg) -> None:
            if missed.sender != settings.instance:
                refresher.note_missed(missed.kids, missed.ttl)

        refresher.on_missed = announce_missed
        await subscribe_typed(
            ctx.nc,
            subjects.AUTHN_JWKS_MISSED,
            JwksMissed,
            on_missed,
            name="jwks-missed",
            metrics=ctx.metrics,
            log=ctx.log,
        )
        await mirror.startup()
        svc = await start_micro(ctx.nc, "authn", description="meshssh identity")
        log, m = ctx.log, ctx.metrics
        # concurrency: a request waiting for the fetch slot must not hold up the others.
        await add_endpoint(
            svc,
            "jwks-refresh",
            subjects.AUTHN_JWKS_REFRESH,
            JwksRefreshRequest,
            refresher.refresh,
            metrics=m,
            log=log,
            concurrency=64,
        )
        await add_subject_endpoint(
            svc,
            "device-start",
            subjects.AUTHN_DEVICE_START_ALL,
            DeviceStartRequest,
            broker.start,
            metrics=m,
            log=log,
        )
        await add_subject_endpoint(
            svc,
            "device-poll",
            subjects.AUTHN_DEVICE_POLL_ALL,
            DevicePollRequest,
            broker.poll,
            metrics=m,
            log=log,
        )
        await add_subject_endpoint(
            svc,
            "token-exchange",
            subjects.AUTHN_TOKEN_EXCHANGE_ALL,
            TokenExchangeRequest,
            exchanger.handle,
            metrics=m,
            log=log,
            concurrency=64,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(exchange_keys.run(ctx.nc))
                http_task = tg.create_task(server.serve()) if server is not None else None
                tg.create_task(mirror.run())
                if provider is not None:
                    tg.create_task(provider.ring.run())
                    ctx.log.info("provider listening", extra={"issuer": provider.config.issuer})
                else:
                    ctx.log.info("mirroring external provider", extra={"issuer": source.issuer})
                ctx.ready.set()
                try:
                    await asyncio.Future()
                finally:
                    if server is not None and http_task is not None:
                        server.stop()
                        with contextlib.suppress(Exception):
                            async with asyncio.timeout(3):
                                await asyncio.shield(http_task)
        finally:
            await svc.stop()
            await refresher.close()
