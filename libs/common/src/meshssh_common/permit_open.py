"""``--ssh-permit-open``: where ``-L``/``-D`` may connect, in OpenSSH ``PermitOpen`` syntax.

SPEC §3; it limits ``direct-tcpip`` channels.

Each entry is ``host:port``, ``[v6addr]:port``, ``*:port`` (any host), ``host:*`` (any port) or
``*:*``; or the single word ``any`` (no limit, the default) or ``none`` (no ``-L``/``-D`` at
all). As with OpenSSH, a destination matches an entry only if it names the same host the
client asked for (no DNS lookups and no patterns; compared case-insensitively) and the same
port: ``localhost:5432`` does not admit ``127.0.0.1:5432``.

Example::

    rule = PermitOpen.parse(["db.internal:5432", "[::1]:8080"])
    rule.allows("db.internal", 5432)      # True
    rule.allows("169.254.169.254", 80)    # False
    rule.specs                            # ("db.internal:5432", "[::1]:8080"): for metadata
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from meshssh_common.errors import BadRequest

__all__ = ["ANY", "PermitOpen", "PermitOpenError"]

ANY = "*"
_MAX_ENTRIES = 256
_MAX_HOST = 255


class PermitOpenError(BadRequest):
    """A ``--ssh-permit-open`` value that is not OpenSSH ``PermitOpen`` syntax."""


def _parse_entry(text: str) -> tuple[str, int | None]:
    """``(host, port)``; host ``*`` is any host, port None is any port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise PermitOpenError(f"--ssh-permit-open: expected HOST:PORT, got {text[:80]!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise PermitOpenError(f"--ssh-permit-open: unclosed '[' in {text[:80]!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise PermitOpenError(
                f"--ssh-permit-open: {host[:60]!r} in brackets is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise PermitOpenError(
            f"--ssh-permit-open: put an IPv6 address in brackets ([::1]:22), got {text[:80]!r}"
        )
    if not host or len(host) > _MAX_HOST or any(c.isspace() or c in "[]/@" for c in host):
        raise PermitOpenError(f"--ssh-permit-open: bad host in {text[:80]!r}")
    if port_text == ANY:
        return host.lower(), None
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise PermitOpenError(
            f"--ssh-permit-open: port must be 1..65535 or '*', got {port_text[:20]!r}"
        )
    return host.lower(), int(port_text)


def _spec(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{ANY if port is None else port}"


@dataclass(frozen=True, slots=True)
class PermitOpen:
    """A parsed permit-open list; ``unrestricted`` for ``any``; no entries for ``none``."""

    unrestricted: bool
    entries: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def parse(cls, values: Iterable[str]) -> PermitOpen:
        """Parse the repeated flag's values (none given: ``any``).

        Raises:
            PermitOpenError: a bad entry, or ``any``/``none`` next to other entries.
        """
        words = [w for v in values for w in v.split()]
        if not words or words == ["any"]:
            return cls(True)
        if words == ["none"]:
            return cls(False)
        if "any" in words or "none" in words:
            raise PermitOpenError(
                "--ssh-permit-open: 'any' and 'none' must stand alone, not next to HOST:PORT"
            )
        if len(words) > _MAX_ENTRIES:
            raise PermitOpenError(f"--ssh-permit-open: at most {_MAX_ENTRIES} entries")
        entries = tuple(dict.fromkeys(_parse_entry(w) for w in words))
        return cls(False, entries)

    @property
    def specs(self) -> tuple[str, ...]:
        """The canonical entries (``("any",)``, ``("none",)`` or ``host:port`` ones)."""
        if self.unrestricted:
            return ("any",)
        if not self.entries:
            return ("none",)
        return tuple(_spec(h, p) for h, p in self.entries)

    def allows(self, host: str, port: int) -> bool:
        """Whether ``-L``/``-D`` may connect to ``host`` (as the client named it) on ``port``."""
        if self.unrestricted:
            return True
        name = host.lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        return any(h in (ANY, name) and p in (None, port) for h, p in self.entries)
