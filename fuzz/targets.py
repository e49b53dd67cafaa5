"""One fuzz target per parser that reads untrusted input; each takes bytes and may raise only
that parser's typed error (anything else is a bug: atheris reports it as a crash, and the
hypothesis properties in ``tests/fuzz`` fail on it).

Targets (``TARGETS``):

- ``wire``: every tagged wire message type through :func:`meshssh_common.codec.decode`
  (``WireError``);
- ``proxy_v2``: :func:`meshssh_common.proxy_protocol.parse_v2` (``ProxyProtocolError``);
- ``forward_spec``: ``-L``/``-R`` specs, :func:`meshssh_cli.ssh.forward_spec.parse_forward`
  (``ForwardSpecError``);
- ``ssh_config_host``: :func:`meshssh_agent.ssh_config.is_valid_host` (never raises), and a
  valid name renders into the drop-in on one line, unquoted, with no OpenSSH token;
- ``user_name``: :func:`meshssh_sshd.accounts.validate_user_name` (``Refused``);
- ``jwt``: whole tokens and tokens around an arbitrary header, through the validator
  (``TokenRejected``);
- ``permit_open``: :meth:`meshssh_common.permit_open.PermitOpen.parse` (``PermitOpenError``),
  then ``allows`` on an arbitrary destination;
- ``terminal_frame``: a browser's text frame to the gateway,
  :func:`meshssh_gateway.terminal.resize_of` (never raises; a size it returns is in range).

The first input byte picks a variant (which message type, raw or structured); the rest is
the input proper. ``seeds()`` gives valid examples to start mutating from.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

import meshssh_common.wire as wire_pkg
from meshssh_agent.ssh_config import DropIn, is_valid_host, render
from meshssh_cli.ssh.forward_spec import ForwardSpecError, parse_forward
from meshssh_common import codec
from meshssh_common.errors import WireError
from meshssh_common.jwt_validation import JwtValidator, TokenRejected
from meshssh_common.permit_open import PermitOpen, PermitOpenError
from meshssh_common.proxy_protocol import ProxyProtocolError, encode_v2, parse_v2
from meshssh_common.wire import agent as wire_agent
from meshssh_common.wire import base as wire_base
from meshssh_gateway.terminal import resize_of
from meshssh_sshd.accounts import validate_user_name
from meshssh_sshd.refusal import Refused

__all__ = ["TARGETS", "seeds"]


def _wire_types() -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []
    todo = list(wire_base.Wire.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found.append(cls)
    assert wire_pkg
    assert wire_agent
    return sorted(found, key=lambda c: c.__name__)


WIRE_TYPES = _wire_types()


def wire(data: bytes) -> None:
    if not data:
        return
    typ = WIRE_TYPES[data[0] % len(WIRE_TYPES)]
    with contextlib.suppress(WireError):
        codec.decode(data[1:], typ)


def proxy_v2(data: bytes) -> None:
    try:
        header, used = parse_v2(data)
    except ProxyProtocolError:
        return
    assert 16 <= used <= len(data)
    if not header.local:
        assert header.source is not None
        assert header.destination is not None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def forward_spec(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(ForwardSpecError):
        parse_forward(_text(data[1:]), remote=bool(data[0] & 1))


_DROPIN = DropIn(executable="/usr/bin/meshssh")


def ssh_config_host(data: bytes) -> None:
    name = _text(data)
    if not is_valid_host(name):
        return
    # A name the drop-in accepts cannot break out of its Match line or its quotes.
    assert not any(c.isspace() or c in "\"'%,*?!#\\" for c in name), name
    text = render([name], _DROPIN)
    assert name in text


def user_name(data: bytes) -> None:
    name = _text(data)
    try:
        validate_user_name(name)
    except Refused:
        return
    assert 0 < len(name) <= 32, name
    assert not name.startswith("-"), name
    assert "/" not in name, name


_KEY = ed25519.Ed25519PrivateKey.generate()
_JWK = {**OKPAlgorithm.to_jwk(_KEY.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
_CONFIG = wire_pkg.JwtConfig(issuer="https://idp.example", audiences=("meshssh",))
_VALIDATOR = JwtValidator(_CONFIG, [_JWK])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:  # an arbitrary header (and payload) around a well-formed token shape
        header, _, payload = data[1:].partition(b"\0")
        token = f"{_b64(header)}.{_b64(payload)}.{_b64(b'sig')}"
    else:
        token = _text(data[1:])
    with contextlib.suppress(TokenRejected):
        _VALIDATOR.validate(token, now=1_800_000_000.0)


def permit_open(data: bytes) -> None:
    spec, _, dest = _text(data).partition("\n")
    try:
        rule = PermitOpen.parse([spec])
    except PermitOpenError:
        return
    assert PermitOpen.parse(rule.specs) == rule
    host, _, port = dest.rpartition(":")
    rule.allows(host, int(port) if port.isascii() and port.isdigit() and len(port) < 6 else 22)


def terminal_frame(data: bytes) -> None:
    size = resize_of(_text(data))
    if size is not None:
        assert all(1 <= v <= 1000 for v in size)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": wire,
    "proxy_v2": proxy_v2,
    "forward_spec": forward_spec,
    "ssh_config_host": ssh_config_host,
    "user_name": user_name,
    "jwt": jwt,
    "permit_open": permit_open,
    "terminal_frame": terminal_frame,
}


def _wire_seeds() -> list[bytes]:
    out = []
    hb = wire_pkg.Heartbeat(peer_id="p-1", sent_at=1.0)
    for message in (hb, wire_pkg.DevicePollRequest(device_code="x")):
        index = WIRE_TYPES.index(type(message))
        out.append(bytes([index]) + codec.encode(message))
    return out


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs per target, to start from."""
    header = json.dumps({"alg": "EdDSA", "kid": "k1", "typ": "JWT"}).encode()
    payload = json.dumps({"iss": "https://idp.example", "aud": "meshssh", "sub": "a"}).encode()
    return {
        "wire": _wire_seeds(),
        "proxy_v2": [
            encode_v2(("100.64.0.7", 40000), ("100.64.0.1", 22)),
            encode_v2(("fd00::7", 40000), ("fd00::1", 22)),
        ],
        "forward_spec": [b"\x008080:localhost:80", b"\x01[::1]:0:db:5432", b"\x00/tmp/s:h:1"],
        "ssh_config_host": [b"demo-server", b"127.0.0.2", b"fd00::1"],
        "user_name": [b"alice", b"_svc.account-1"],
        "jwt": [b"\x01" + header + b"\0" + payload, b"\x00a.b.c"],
        "permit_open": [b"db:5432\ndb:5432", b"[::1]:*\n::1:22", b"none\nx:1"],
        "terminal_frame": [b'{"type":"resize","cols":120,"rows":40}', b'{"type":"x"}'],
    }


def write_seeds(directory: Path, name: str) -> None:
    """Write the seeds of target ``name`` into ``directory`` (an atheris corpus)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()[name]):
        (directory / f"seed-{i}").write_bytes(seed)
