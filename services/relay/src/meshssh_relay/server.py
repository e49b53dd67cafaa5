"""The body of meshssh-relay: watch the peer's map, then relay or redirect port 22.

Modes (``--mode``):

- ``proxy``: :class:`~meshssh_relay.proxy.ProxyRelay` listens on ``--listen`` and enforces the
  ACL itself (SSH on: to sshd's relay socket, ``--sshd-socket``, with a PROXY header; SSH off:
  to ``--native-upstream`` or closed). sshd's TCP port takes no PROXY header, so a proxy-mode
  relay given ``--sshd`` without ``--sshd-socket`` is a config error (exit 2).
- ``nftables``: :class:`~meshssh_relay.nftables.NftRedirect` keeps a kernel rule in place while
  SSH is on for this peer, so clients reach sshd directly and sshd applies the ACL. A userspace
  listener runs too only when ``--native-upstream`` is set, to serve SSH-off connections.

Order on start: the map watch begins; the listener binds; the redirect is reconciled with the
first map (or after two seconds without one, which removes a rule left by a crash); then the
relay reports ready. On stop: the listener closes, relayed connections get half the shutdown
grace to end by themselves (so a closing sshd's last words reach the client), the rest are
dropped, and the rule is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from meshssh_common.errors import ConfigError
from meshssh_common.peer_map import PeerMap
from meshssh_common.service import ServiceContext
from meshssh_common.settings import split_host_port
from meshssh_common.wire import NetworkMap
from meshssh_relay.nftables import NftRedirect
from meshssh_relay.proxy import ProxyRelay, RelayMetrics
from meshssh_relay.settings import RelaySettings

__all__ = ["build_redirect", "check_upstreams", "serve"]

_FIRST_MAP_WAIT = 2.0


def build_redirect(settings: RelaySettings) -> NftRedirect | None:
    """The redirect of an nftables-mode relay (None in proxy mode or without sshd).

    Raises:
        ConfigError: nftables mode without ``--mesh-interface``.
    """
    if settings.mode != "nftables" or settings.sshd is None:
        return None
    if not settings.mesh_interface:
        raise ConfigError("--mesh-interface", "required in nftables mode")
    host, port = split_host_port(settings.listen)
    _, to_port = split_host_port(settings.sshd)
    return NftRedirect(settings.table, settings.mesh_interface, host, port, to_port)


def check_upstreams(settings: RelaySettings) -> None:
    """Refuse a proxy-mode relay that could reach sshd only over TCP.

    Raises:
        ConfigError: ``--sshd`` without ``--sshd-socket`` in proxy mode.
    """
    if settings.mode == "proxy" and settings.sshd is not None and settings.sshd_socket is None:
        raise ConfigError(
            "--sshd-socket",
            "required in proxy mode: sshd takes the relay's PROXY header only on its relay "
            "socket (--relay-socket), never on TCP",
        )


async def _reconcile(
    ctx: ServiceContext[RelaySettings],
    redirect: NftRedirect,
    holder: PeerMap,
    changed: asyncio.Event,
    metrics: RelayMetrics,
) -> None:
    """Keep the rule in step with the map's SSH switch until cancelled."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_FIRST_MAP_WAIT):
            await holder.received.wait()
    while True:
        changed.clear()
        if holder.ssh_enabled:
            changed_rule = await redirect.install()
            ctx.log.info(
                "redirect installed" if changed_rule else "redirect already in place",
                extra={"rule": redirect.rule_text()},
            )
            metrics.redirect.set(1)
        else:
            if await redirect.installed():
                ctx.log.info("redirect removed: SSH is off for this peer")
            await redirect.remove()
            metrics.redirect.set(0)
        ctx.ready.set()
        await changed.wait()


async def serve(ctx: ServiceContext[RelaySettings]) -> None:
    """Run the relay until cancelled (see the module docstring)."""
    settings = ctx.settings
    # Pump threads hand the GIL back and forth on every chunk; a short switch interval keeps
    # a waking thread from waiting up to 5 ms behind another (connection setup latency).
    sys.setswitchinterval(0.0005)
    metrics = RelayMetrics(ctx.metrics)
    log = ctx.log.bind(mode=settings.mode, peer=settings.peer_id)
    holder = PeerMap(log=log, metrics=ctx.metrics, pins=settings.pins)
    changed = asyncio.Event()

    def on_change(_old: NetworkMap | None, netmap: NetworkMap | None) -> None:
        metrics.map_serial.set(netmap.serial if netmap else 0)
        metrics.ssh_enabled.set(1 if holder.ssh_enabled else 0)
        changed.set()

    holder.on_change(on_change)
    check_upstreams(settings)
    redirect = build_redirect(settings)
    proxy = None
    if settings.mode == "proxy" or settings.native_upstream:
        proxy = ProxyRelay(settings, holder, metrics, ctx.log)
    try:
        if proxy is not None:
            await proxy.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(holder.follow(ctx.nc, settings.peer_id))
            if redirect is not None:
                tg.create_task(_reconcile(ctx, redirect, holder, changed, metrics))
            else:
                ctx.ready.set()
            log.info(
                "relay serving",
                extra={
                    "listen": settings.listen,
                    "sshd": settings.sshd,
                    "sshd_socket": str(settings.sshd_socket or ""),
                },
            )
    except* ConfigError as group:
        raise group.exceptions[0] from None  # the runner turns it into exit 2 and one line
    finally:
        if proxy is not None:
            await proxy.stop(linger=settings.shutdown_grace / 2)
        if redirect is not None:
            await redirect.remove()
            metrics.redirect.set(0)
            log.info("redirect removed")
