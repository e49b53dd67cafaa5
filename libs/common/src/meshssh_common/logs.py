"""Structured logging: JSON or ``key=value`` text lines, with bound context per service/connection.

Example::

    configure_logging("INFO", "json")
    log = service_logger("sshd", "node-1")
    conn_log = log.bind(conn="c42", peer="100.64.0.7:51234")
    conn_log.info("auth accepted", extra={"user": "alice"})
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

__all__ = ["BoundLogger", "configure_logging", "service_logger"]

# Attributes every LogRecord has; anything else on a record came from `extra` or bound context.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's duplicate of msg
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then every context field."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-25T10:00:00Z info sshd msg key=value ...`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one readable line."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extra = " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())
        line = f"{ts}Z {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


class BoundLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter carrying context fields into every record; ``bind`` adds more."""

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any]) -> None:
        super().__init__(logger, dict(context))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Merge bound context under any per-call ``extra``."""
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def bind(self, **context: Any) -> BoundLogger:
        """A new logger with ``context`` added to this one's."""
        merged = dict(self.extra or {})
        merged.update(context)
        return BoundLogger(self.logger, merged)


def configure_logging(level: str, fmt: Literal["json", "text"] = "text") -> None:
    """Send every log record to stderr in ``fmt``; call once, from ``main``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncssh", "uvicorn.access", "uvicorn.error", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def service_logger(name: str, instance: str = "") -> BoundLogger:
    """The root logger of a service, bound to its name and instance."""
    context = {"service": name}
    if instance:
        context["instance"] = instance
    return BoundLogger(logging.getLogger(f"meshssh.{name}"), context)
