"""``meshssh ssh detect HOST PORT``: is there a MeshSSH server? (exit 0 yes, 2 no, within 5 s).

OpenSSH runs it from the drop-in's ``Match ... exec``. It reads the server's identification
line (RFC 4253 §4.2 allows other lines before it) and classifies by that line alone:
``SSH-2.0-MeshSSH-<version>`` with or without `` MeshSSH-JWT-Required``. Machine-identity
servers (no JWT) count too, so the drop-in covers them (NetBird left them out). Any error,
timeout or other server is "no", so plain OpenSSH takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass

__all__ = ["BannerKind", "Detection", "classify", "probe"]

PRODUCT = "MeshSSH-"
JWT_MARKER = "MeshSSH-JWT-Required"
_MAX_PREAMBLE = 8192


class BannerKind(enum.Enum):
    """What answered."""

    MESHSSH_JWT = "meshssh-jwt"
    MESHSSH_NO_AUTH = "meshssh-machine-identity"
    OTHER_SSH = "other-ssh"
    NOT_SSH = "not-ssh"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class Detection:
    """The classification and the identification line (empty when none was read)."""

    kind: BannerKind
    banner: str = ""

    @property
    def is_meshssh(self) -> bool:
        """True for a MeshSSH server, with or without JWT auth."""
        return self.kind in (BannerKind.MESHSSH_JWT, BannerKind.MESHSSH_NO_AUTH)

    @property
    def jwt_required(self) -> bool:
        """True when the server wants a JWT as the password."""
        return self.kind is BannerKind.MESHSSH_JWT


def classify(line: str) -> BannerKind:
    """Classify one identification line (``SSH-2.0-<software> [comments]``)."""
    if not line.startswith("SSH-"):
        return BannerKind.NOT_SSH
    parts = line.split("-", 2)
    software = parts[2].split(" ", 1) if len(parts) == 3 else [""]
    if not software[0].startswith(PRODUCT):
        return BannerKind.OTHER_SSH
    comments = software[1].split() if len(software) > 1 else []
    return BannerKind.MESHSSH_JWT if JWT_MARKER in comments else BannerKind.MESHSSH_NO_AUTH


async def probe(
    host: str, port: int, *, source: str | None = None, timeout: float = 5.0
) -> Detection:
    """Connect (from ``source`` when given), read the identification line, and close.

    Never raises: every failure is a :class:`Detection` of kind ``UNREACHABLE``/``NOT_SSH``.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            local = (source, 0) if source else None
            reader, writer = await asyncio.open_connection(host, port, local_addr=local)
            seen = 0
            while seen < _MAX_PREAMBLE:
                raw = await reader.readline()
                if not raw:
                    return Detection(BannerKind.NOT_SSH)
                seen += len(raw)
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("SSH-"):
                    return Detection(classify(line), line)
            return Detection(BannerKind.NOT_SSH)
    except (OSError, TimeoutError, ValueError):
        return Detection(BannerKind.UNREACHABLE)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
