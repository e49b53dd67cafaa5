"""Service settings: pydantic-settings classes, their command-line flags and env variables.

Each service subclasses :class:`ServiceSettings` with its own ``env_prefix``
(``MESHSSH_<SERVICE>_``). Settings shared by every service keep the names SPEC §11 fixes
(``MESHSSH_NATS_URL``, ``MESHSSH_NATS_CREDS``...) through an explicit alias. Every field is
also a flag, named after the field (``nats_url`` → ``--nats-url``), so ``--help`` lists each
setting with its env variable. Settings are built once in ``main`` and passed down.

Example::

    settings = parse_settings(SshdSettings, sys.argv[1:], prog="meshssh-sshd")
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import pydantic
from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshssh_common.errors import ConfigError

__all__ = [
    "HostPort",
    "ServiceSettings",
    "env_name",
    "flag_name",
    "parse_settings",
    "split_host_port",
]

S = TypeVar("S", bound=BaseSettings)


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts.

    Raises:
        ValueError: no port, a port outside 0..65535, or an empty host.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} outside 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    return host, port


def _check_host_port(value: str) -> str:
    split_host_port(value)
    return value


HostPort = Annotated[str, AfterValidator(_check_host_port)]
"""A ``HOST:PORT`` listen or dial address; port 0 lets the OS choose."""


class ServiceSettings(BaseSettings):
    """Settings every service process has (SPEC §11)."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_", frozen=True, populate_by_name=True, extra="forbid"
    )

    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        validation_alias="MESHSSH_NATS_URL",
        description="NATS server URL(s), comma-separated",
    )
    nats_creds: Path | None = Field(
        None, validation_alias="MESHSSH_NATS_CREDS", description="NATS credentials file"
    )
    nats_ca: Path | None = Field(
        None,
        validation_alias="MESHSSH_NATS_CA",
        description="CA certificate (PEM) that signed the NATS server's TLS certificate",
    )
    ops_listen: HostPort = Field(
        "127.0.0.1:9100", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="MESHSSH_LOG_LEVEL", description="log level"
    )
    log_format: Literal["json", "text"] = Field(
        "text", validation_alias="MESHSSH_LOG_FORMAT", description="log line format"
    )
    instance: str = Field(
        default_factory=socket.gethostname,
        validation_alias="MESHSSH_INSTANCE",
        description="instance name in logs and the NATS client name",
    )
    shutdown_grace: float = Field(
        10.0,
        gt=0,
        validation_alias="MESHSSH_SHUTDOWN_GRACE",
        description="seconds to drain on SIGTERM before giving up",
    )
    nats_replicas: int = Field(
        1,
        ge=1,
        le=5,
        validation_alias="MESHSSH_NATS_REPLICAS",
        description="JetStream replicas of every bucket and stream this service creates "
        "(3 on a 3-node cluster)",
    )
    nats_request_timeout: float = Field(
        2.0,
        gt=0,
        validation_alias="MESHSSH_NATS_REQUEST_TIMEOUT",
        description="seconds to wait for a NATS reply",
    )
    nats_start_timeout: float = Field(
        60.0,
        gt=0,
        validation_alias="MESHSSH_NATS_START_TIMEOUT",
        description="seconds a starting service keeps starting again, with backoff, while "
        "JetStream is not ready (account not found, no leader yet) before it exits 1",
    )


def flag_name(name: str) -> str:
    """The command-line flag of a settings field: ``nats_url`` → ``--nats-url``."""
    return "--" + name.replace("_", "-")


def env_name(cls: type[BaseSettings], name: str) -> str:
    """The environment variable a settings field of ``cls`` is read from."""
    field = cls.model_fields[name]
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    prefix = cls.model_config.get("env_prefix", "")
    return f"{prefix}{name}".upper()


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_argument(parser: argparse.ArgumentParser, cls: type[BaseSettings], name: str) -> None:
    field = cls.model_fields[name]
    annotation = _strip_optional(field.annotation)
    if field.is_required():
        default = " (required)"
    elif field.default_factory is not None:
        default = ""
    else:
        default = f" (default: {field.default})"
    helptext = f"{field.description or name}{default} [env {env_name(cls, name)}]"
    origin = get_origin(annotation)
    if annotation is bool:
        parser.add_argument(
            flag_name(name),
            dest=name,
            action="store_true",
            default=argparse.SUPPRESS,
            help=helptext,
        )
    elif origin in (tuple, list):
        parser.add_argument(
            flag_name(name),
            dest=name,
            action="append",
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=helptext + " (repeatable)",
        )
    elif origin is Literal:
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            choices=[str(a) for a in get_args(annotation)],
            help=helptext,
        )
    else:
        parser.add_argument(
            flag_name(name),
            dest=name,
            metavar=name.split("_")[-1].upper(),
            default=argparse.SUPPRESS,
            help=helptext,
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError("arguments", message)


def build_parser(
    cls: type[BaseSettings], *, prog: str, description: str = ""
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field (for ``--help`` and parsing)."""
    parser = _Parser(prog=prog, description=description)
    for name in cls.model_fields:
        _add_argument(parser, cls, name)
    return parser


def parse_settings(
    cls: type[S], argv: Sequence[str] | None = None, *, prog: str, description: str = ""
) -> S:
    """Build settings from flags (highest priority), then env variables, then defaults.

    Args:
        cls: the service's settings class.
        argv: the arguments, without the program name; ``sys.argv[1:]`` when None.
        prog: the program name shown in help and errors.
        description: one line for ``--help``.

    Returns:
        The frozen settings.

    Raises:
        ConfigError: an unknown flag, or a value that does not validate; the message names
            the setting's flag and env variable.
    """
    parser = build_parser(cls, prog=prog, description=description)
    args = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    try:
        return cls(**args)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else "settings"
        name = next(
            (n for n in cls.model_fields if n == loc or env_name(cls, n).lower() == loc.lower()),
            loc,
        )
        setting = flag_name(name) if name in cls.model_fields else name
        env = f" / {env_name(cls, name)}" if name in cls.model_fields else ""
        raise ConfigError(f"{setting}{env}", err["msg"]) from e
