"""Whether a peer's agent supports native SSH, from its capabilities or version (SPEC §4).

A peer that lists the ``native_ssh`` capability supports it whatever its version says (the
meshssh agent always lists it). Otherwise the version decides: ``>= 0.60.0`` compared
numerically after dropping any pre-release (``-rc1``) or build (``+abc``) suffix, so
``0.60.0-rc1`` counts as 0.60.0; versions starting ``dev``, ``development`` or ``ci-`` count
as supporting; anything unparsable does not.

Example::

    supports_native_ssh(PeerMeta(version="0.60.0-rc1"))   # True
    supports_native_ssh(PeerMeta(version="0.59.9"))       # False
"""

from __future__ import annotations

import re

from meshssh_common.wire import PeerMeta

__all__ = ["MIN_NATIVE_SSH", "NATIVE_SSH_CAPABILITY", "parse_version", "supports_native_ssh"]

NATIVE_SSH_CAPABILITY = "native_ssh"
MIN_NATIVE_SSH = (0, 60, 0)
_DEV_PREFIXES = ("dev", "ci-")  # "dev" also covers "development" and "dev-<sha>"
_NUMERIC = re.compile(r"^v?(\d+(?:\.\d+){0,3})$")


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"v0.60.1-rc1+g1"`` → ``(0, 60, 1)``; None when it is not a dotted number."""
    core = text.strip().split("-", 1)[0].split("+", 1)[0]
    match = _NUMERIC.match(core)
    if match is None:
        return None
    parts = tuple(int(p) for p in match[1].split("."))
    return parts + (0,) * (3 - len(parts)) if len(parts) < 3 else parts


def supports_native_ssh(meta: PeerMeta) -> bool:
    """Whether the agent described by ``meta`` runs a native SSH server (fails closed)."""
    if NATIVE_SSH_CAPABILITY in meta.capabilities:
        return True
    version = meta.version.strip().lower()
    if version.startswith(_DEV_PREFIXES):
        return True
    parsed = parse_version(version)
    return parsed is not None and parsed >= MIN_NATIVE_SSH
