"""Serve an ASGI app (the ops endpoints, FastAPI apps) with uvicorn inside a running service.

The socket is bound here, before uvicorn starts, so a taken port fails fast with a clear
error and port 0 gives the real port at once. Signals stay with the service runner.

Example::

    server = HttpServer(app, "127.0.0.1:0")
    tg.create_task(server.serve())
    print(server.url)
    server.stop()
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from meshssh_common.errors import ConfigError
from meshssh_common.settings import split_host_port

__all__ = ["HttpServer", "bind_tcp"]


def bind_tcp(listen: str, *, setting: str = "listen") -> socket.socket:
    """Bind a listening TCP socket on ``HOST:PORT``.

    Raises:
        ConfigError: the address is malformed, or the port is taken or not permitted; the
            message says what to do.
    """
    try:
        host, port = split_host_port(listen)
    except ValueError as e:
        raise ConfigError(setting, str(e)) from e
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError as e:
        sock.close()
        hint = "choose a free port, or stop what holds it"
        if port < 1024:
            hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another port"
        raise ConfigError(setting, f"cannot bind {listen}: {e.strerror}; {hint}") from e
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The service runner owns SIGTERM/SIGINT; uvicorn must not install its own handlers.
        yield


class HttpServer:
    """One uvicorn server on a socket bound at construction."""

    def __init__(self, app: Any, listen: str, *, setting: str = "listen", **options: Any) -> None:
        self.sock = bind_tcp(listen, setting=setting)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            **options,  # more uvicorn.Config settings (WebSocket protocol, proxy headers...)
        )
        self._server = _Server(config)

    @property
    def host_port(self) -> tuple[str, int]:
        """The address actually bound."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket."""
        host, port = self.host_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def serve(self) -> None:
        """Serve until :meth:`stop`; closes the socket on the way out."""
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        """Ask the server to finish in-flight requests and return from :meth:`serve`."""
        self._server.should_exit = True
