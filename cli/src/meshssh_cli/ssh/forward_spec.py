r"""Port-forward specifications for ``-L``/``-R``, parsed exactly as OpenSSH's ``parse_forward``.

Accepted forms (``:`` separates fields; a field in ``[...]`` is taken literally, so IPv6
addresses go in brackets; a ``\\`` escapes the next character; a field containing ``/`` is a
Unix-socket path)::

    [bind_address:]port:host:hostport      -L 8080:db:5432   -L [::1]:8080:[fd00::7]:80
    [bind_address:]port:remote_socket      -L 8080:/run/app.sock
    local_socket:host:hostport             -L /tmp/s.sock:db:5432
    local_socket:remote_socket             -L /tmp/s.sock:/run/app.sock

Ports are numbers 0-65535 or service names; a listen port 0 is allowed only for ``-R`` (the
server picks one), a destination port must be non-zero. An empty bind address or ``*`` means
every interface; no bind address means loopback (OpenSSH's ``GatewayPorts no``).

Example::

    spec = parse_forward("[::1]:8080:db.internal:5432", remote=False)
    spec.listen_host, spec.listen_port, spec.connect_host, spec.connect_port
    # ('::1', 8080, 'db.internal', 5432)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["ForwardSpec", "ForwardSpecError", "parse_forward"]

_MAX_HOST = 1025  # NI_MAXHOST
_MAX_SUN_PATH = 108  # sizeof(sockaddr_un.sun_path) on Linux


class ForwardSpecError(ValueError):
    """A forward specification OpenSSH would also reject."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"Bad forwarding specification {spec!r}: {problem}")
        self.spec = spec
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """One ``-L``/``-R`` forward: a TCP port or Unix socket on each side.

    ``listen_host`` is None when the spec gave no bind address; ``""`` means every interface.
    Exactly one of ``listen_port``/``listen_path`` and of ``connect_host``/``connect_path``
    is set.
    """

    listen_host: str | None = None
    listen_port: int | None = None
    listen_path: str | None = None
    connect_host: str | None = None
    connect_port: int | None = None
    connect_path: str | None = None

    def bind_host(self) -> str:
        """The address to listen on: ``localhost`` by default, ``""`` for every interface."""
        if self.listen_host is None:
            return "localhost"
        return "" if self.listen_host in ("", "*") else self.listen_host

    def describe(self) -> str:
        """A short human form, ``127.0.0.1:8080 -> db:5432``."""
        left = self.listen_path or f"{self.bind_host() or '*'}:{self.listen_port}"
        right = self.connect_path or f"{self.connect_host}:{self.connect_port}"
        return f"{left} -> {right}"


@dataclass(slots=True)
class _Field:
    text: str
    is_path: bool


def _fields(spec: str) -> list[_Field]:
    """Split like OpenSSH's ``parse_fwd_field``: brackets literal, backslash escapes."""
    fields: list[_Field] = []
    rest = spec.lstrip()
    while rest and len(fields) < 4:
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0 or (end + 1 < len(rest) and rest[end + 1] != ":"):
                raise ForwardSpecError(spec, "unbalanced '[' or text after ']'")
            inner = rest[1:end]
            fields.append(_Field(inner, "/" in inner))
            rest = rest[end + 2 :]
            continue
        out: list[str] = []
        is_path = False
        i = 0
        while i < len(rest):
            ch = rest[i]
            if ch == "\\":
                if i + 1 >= len(rest):
                    raise ForwardSpecError(spec, "trailing backslash")
                out.append(rest[i + 1])
                i += 2
                continue
            if ch == ":":
                break
            if ch == "/":
                is_path = True
            out.append(ch)
            i += 1
        fields.append(_Field("".join(out), is_path))
        rest = rest[i + 1 :] if i < len(rest) else ""
    if rest:
        raise ForwardSpecError(spec, "too many fields")
    return fields


def _port(spec: str, text: str) -> int:
    """OpenSSH's ``a2port``: 0-65535, or a TCP service name."""
    if text.isascii() and text.isdigit():  # not "²": str.isdigit() admits it, int() does not
        value = int(text)
        if value <= 65535:
            return value
        raise ForwardSpecError(spec, f"port {text} out of range")
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):  # argv bytes that are not UTF-8, NUL (fuzzed)
        raise ForwardSpecError(spec, f"bad port {text!r}") from None


def parse_forward(spec: str, *, remote: bool) -> ForwardSpec:
    """Parse one ``-L`` (``remote=False``) or ``-R`` (``remote=True``) specification.

    Raises:
        ForwardSpecError: the spec is malformed, a port is invalid, a listen port is 0 for a
            local forward, the destination port is 0, or a name or path is too long.
    """
    f = _fields(spec)
    n = len(f)
    if n == 2 and f[0].is_path and f[1].is_path:
        fwd = ForwardSpec(listen_path=f[0].text, connect_path=f[1].text)
    elif n == 2 and f[1].is_path:
        fwd = ForwardSpec(listen_port=_port(spec, f[0].text), connect_path=f[1].text)
    elif n == 3 and f[0].is_path:
        fwd = ForwardSpec(
            listen_path=f[0].text, connect_host=f[1].text, connect_port=_port(spec, f[2].text)
        )
    elif n == 3 and f[2].is_path:
        fwd = ForwardSpec(
            listen_host=f[0].text, listen_port=_port(spec, f[1].text), connect_path=f[2].text
        )
    elif n == 3:
        fwd = ForwardSpec(
            listen_port=_port(spec, f[0].text),
            connect_host=f[1].text,
            connect_port=_port(spec, f[2].text),
        )
    elif n == 4:
        fwd = ForwardSpec(
            listen_host=f[0].text,
            listen_port=_port(spec, f[1].text),
            connect_host=f[2].text,
            connect_port=_port(spec, f[3].text),
        )
    else:
        raise ForwardSpecError(spec, "expected [bind_address:]port:host:hostport")
    if fwd.connect_path is None and not fwd.connect_port:
        raise ForwardSpecError(spec, "destination port must not be 0")
    if fwd.connect_host is not None and not fwd.connect_host:
        raise ForwardSpecError(spec, "empty destination host")
    if fwd.listen_path is None and fwd.listen_port == 0 and not remote:
        raise ForwardSpecError(spec, "listen port 0 is allowed only for -R")
    if fwd.connect_host is not None and len(fwd.connect_host) >= _MAX_HOST:
        raise ForwardSpecError(spec, "destination host name too long")
    for path in (fwd.listen_path, fwd.connect_path):
        # fsencode: argv bytes that are not UTF-8 arrive as surrogates (found by fuzzing).
        if path is not None and len(os.fsencode(path)) >= _MAX_SUN_PATH:
            raise ForwardSpecError(spec, "socket path too long")
    return fwd
