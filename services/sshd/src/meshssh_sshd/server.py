"""The body of meshssh-sshd: build the server, serve, and drain on shutdown.

Start-up, in order: load (or create) the host key; open the listening socket and, with
``--relay-socket``, the relay's Unix socket (a bad ``--listen`` or socket path exits 2); make
sure the ``MESHSSH_AUDIT`` stream exists; follow this peer's map and the signing keys; once
both are known (bounded waits), accept connections and report ready. The identification
banner is ``SSH-2.0-MeshSSH-<version>``, plus `` MeshSSH-JWT-Required`` when JWT auth is on
(SPEC §6).

Shutdown (the runner cancels :func:`serve` on SIGTERM): stop accepting, let running sessions
finish for most of the shutdown grace, then close what is left ("server shutting down"),
SIGTERM/SIGKILL its processes, publish the last audit events and an empty session report.

Example::

    server = SshServer(ctx)
    await server.run()          # until cancelled; server.address once listening
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid

import asyncssh

from meshssh_common import ssh_packets
from meshssh_common.audit_log import AuditLog
from meshssh_common.host_keys import HostKey, load_or_create_host_key
from meshssh_common.peer_map import PeerMap
from meshssh_common.service import ServiceContext
from meshssh_common.tasks import TaskSet
from meshssh_common.version import VERSION
from meshssh_sshd.accounts import Accounts
from meshssh_sshd.agent_socket import AgentConnection, AgentSockets
from meshssh_sshd.auth import Authenticator
from meshssh_sshd.browser_check import BrowserCheck
from meshssh_sshd.core import SshdCore
from meshssh_sshd.gate import Gate
from meshssh_sshd.jwks_watch import JwksWatch
from meshssh_sshd.metrics import SshdMetrics
from meshssh_sshd.origin import Origin
from meshssh_sshd.peer_server import PeerServer
from meshssh_sshd.rate_limit import FailureLimiter
from meshssh_sshd.relay_socket import RelaySocket
from meshssh_sshd.replay_cache import ReplayCache
from meshssh_sshd.revocation import Revoker
from meshssh_sshd.sessions import LiveRegistry, SessionsReporter
from meshssh_sshd.settings import SshdSettings

__all__ = ["SFTP_SERVER_PATHS", "SshServer", "banner", "find_sftp_server", "serve"]

SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/lib/sftp-server",
)
_INITIAL_WAIT = 5.0


def banner(jwt_required: bool) -> str:
    """The identification string after ``SSH-2.0-`` (SPEC §6)."""
    text = f"MeshSSH-{VERSION}"
    return text + " MeshSSH-JWT-Required" if jwt_required else text


def find_sftp_server(configured: str | None) -> str | None:
    """The sftp-server program to run for the ``sftp`` subsystem, if there is one."""
    candidates = [configured] if configured else [*SFTP_SERVER_PATHS, "sftp-server"]
    for path in candidates:
        found = shutil.which(path) if not os.path.isabs(path) else path
        if found and os.access(found, os.X_OK):
            return found
    return None


class SshServer:
    """One running SSH server; ``address`` and ``core`` are set once it listens."""

    def __init__(self, ctx: ServiceContext[SshdSettings]) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.address: tuple[str, int] | None = None
        self.host_key: HostKey | None = None
        self.core: SshdCore | None = None
        self.listening = asyncio.Event()
        self._options: asyncssh.SSHServerConnectionOptions | None = None

    def _build_core(self) -> SshdCore:
        ctx, settings = self.ctx, self.settings
        log = ctx.log.bind(peer=settings.peer_id)
        metrics = SshdMetrics(ctx.metrics)
        js = ctx.js
        maps = PeerMap(log=log, metrics=ctx.metrics, pins=settings.pins)
        keys = JwksWatch(
            ctx.nc, ctx.metrics, metrics, log, requester=settings.peer_id, pins=settings.pins
        )
        sftp = find_sftp_server(str(settings.sftp_server) if settings.sftp_server else None)
        if settings.enable_ssh_sftp and sftp is None:
            log.warning(
                "SFTP is enabled but no sftp-server program was found; "
                "install openssh-sftp-server or set --sftp-server"
            )
        core = SshdCore(
            settings=settings,
            log=log,
            metrics=metrics,
            audit=AuditLog(js, settings.peer_id, metrics.audit, log),
            js=js,
            maps=maps,
            keys=keys,
            auth=Authenticator(
                maps,
                keys,
                metrics,
                log,
                peer_id=settings.peer_id,
                replays=ReplayCache(settings.replay_cache_size),
                accept_idp_tokens=settings.accept_idp_tokens,
            ),
            browser=BrowserCheck(
                ctx.nc, settings.peer_id, wait=settings.browser_check_wait, log=log
            ),
            accounts=Accounts(
                allow_root=settings.enable_ssh_root,
                log=log,
                accept_locked=settings.accept_locked_accounts,
            ),
            limiter=FailureLimiter(
                limit=settings.auth_failure_limit,
                window=settings.auth_failure_window,
                source_limit=settings.auth_failure_source_limit,
                max_backoff=settings.auth_backoff_max,
            ),
            live=LiveRegistry(),
            tasks=TaskSet(log),
            sftp_server=sftp,
            agents=AgentSockets(log),
        )
        maps.on_change(Revoker(core).on_map)
        return core

    async def run(self) -> None:
        """Serve until cancelled, then drain (see the module docstring)."""
        settings = self.settings
        ssh_packets.install()  # asyncssh's leaner packet path (bench/ssh_throughput.py)
        self.host_key = await asyncio.to_thread(load_or_create_host_key, settings.host_key)
        ssh_key = asyncssh.import_private_key(settings.host_key.read_bytes())
        core = self.core = self._build_core()
        self._options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=[ssh_key],
            server_version=banner(core.jwt_mode),
            login_timeout=settings.login_timeout,
            keepalive_interval=60,
            keepalive_count_max=3,
            encoding=None,
            agent_forwarding=settings.enable_ssh_agent_forwarding,
            x11_forwarding=False,
            allow_scp=False,
            max_pktsize=ssh_packets.MAX_PACKET,  # clients may send 128 KiB packets
        )
        gate = Gate(core, settings.listen, self._serve_connection)
        self.address = gate.open()
        relay = None
        if settings.relay_socket is not None:
            relay = RelaySocket(core, gate, settings.relay_socket)
            try:
                relay.open()
            except BaseException:
                gate.close()
                raise
        reporter = SessionsReporter(
            self.ctx.nc,
            settings.peer_id,
            core.live,
            core.log,
            interval=settings.sessions_report_interval,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(core.maps.follow(self.ctx.nc, settings.peer_id))
                tg.create_task(core.keys.run())
                tg.create_task(core.audit.run())
                tg.create_task(reporter.run())
                if not await core.maps.wait_received(_INITIAL_WAIT):
                    core.log.warning("no network map yet: refusing connections until one comes")
                if core.jwt_mode and not await core.keys.wait_initial(_INITIAL_WAIT):
                    core.log.warning("no JWKS snapshot yet: JWT logins fail until one comes")
                tg.create_task(gate.run())
                if relay is not None:
                    tg.create_task(relay.run())
                self._announce(core)
                try:
                    await asyncio.Future()
                except asyncio.CancelledError:
                    if relay is not None:
                        relay.close()
                    await self._drain(core, gate, reporter)
                    raise
        finally:
            gate.close()
            if relay is not None:
                relay.close()
            await core.tasks.close(timeout=settings.shutdown_grace)
            core.agents.close()

    def _announce(self, core: SshdCore) -> None:
        assert self.address is not None
        assert self.host_key is not None
        host, port = self.address
        core.log.info(
            "ssh listening",
            extra={
                "address": f"{host}:{port}",
                "banner": banner(core.jwt_mode),
                "host_key": self.host_key.fingerprint,
                "switching": core.accounts.switching,
                "sftp": core.settings.enable_ssh_sftp,
                "local_forwarding": core.settings.enable_ssh_local_port_forwarding,
                "remote_forwarding": core.settings.enable_ssh_remote_port_forwarding,
                "root": core.settings.enable_ssh_root,
                "agent_forwarding": core.settings.enable_ssh_agent_forwarding,
                "permit_open": list(core.settings.ssh_permit_open),
                "accept_idp_tokens": core.settings.accept_idp_tokens,
                "relay_socket": str(core.settings.relay_socket or ""),
            },
        )
        self.listening.set()
        self.ctx.ready.set()

    async def _serve_connection(self, sock: socket.socket, origin: Origin) -> None:
        """Start SSH on an accepted socket; the connection then lives on its own.

        The equivalent of ``asyncssh.run_server`` without its per-connection thread hop (it
        builds options in an executor) and without waiting for the login: the
        :class:`PeerServer` owns everything after this. A connection that never gets that
        far gives its start-up slot back here.
        """
        core = self.core
        assert core is not None
        loop = asyncio.get_running_loop()
        conn_id = uuid.uuid4().hex[:10]
        created: list[PeerServer] = []

        def make_server() -> PeerServer:
            created.append(PeerServer(core, origin, conn_id))
            return created[0]

        options = asyncssh.SSHServerConnectionOptions(self._options, server_factory=make_server)
        try:
            await loop.connect_accepted_socket(lambda: AgentConnection(loop, options), sock)
        except Exception as e:  # the client left, or the socket is unusable
            core.log.info(
                "connection failed before SSH started",
                extra={"conn": conn_id, "client": origin.label, "error": repr(e)},
            )
            with contextlib.suppress(OSError):
                sock.close()
            if not created:
                core.startup_ended(origin.client_ip)

    async def _drain(self, core: SshdCore, gate: Gate, reporter: SessionsReporter) -> None:
        settings = self.settings
        core.draining = True
        self.ctx.ready.clear()
        gate.close()
        budget = max(0.0, self.ctx.settings.shutdown_grace - 2 * settings.kill_grace - 1.0)
        core.log.info(
            "draining: waiting for sessions to end",
            extra={"sessions": core.open_sessions, "seconds": budget},
        )
        await _wait(core.idle, budget)
        for record in list(core.live.connections.values()):
            record.closer.shutdown()
        await _wait(core.idle, 2 * settings.kill_grace + 0.5)
        # Dropped sessions are being hung up / SIGTERMed / SIGKILLed: let that finish.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * settings.kill_grace + 0.5):
                for child in list(core.children):
                    await child.exited.wait()
        await reporter.publish()
        await core.audit.flush(1.0)
        core.log.info("drained", extra={"sessions_left": core.open_sessions})


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


async def serve(ctx: ServiceContext[SshdSettings]) -> None:
    """The service body run by :func:`meshssh_common.service.run_service`."""
    await SshServer(ctx).run()
