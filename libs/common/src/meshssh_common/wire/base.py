"""Base classes and shared constrained types of the wire messages."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Count", "MeshIp", "Part", "PeerId", "Port", "Wire"]


class Wire(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type"):
    """Base of every NATS payload. Tags are '<service>.<name>.v<N>'; never reuse one."""


class Part(msgspec.Struct, frozen=True, omit_defaults=True):
    """Untagged nested value inside a Wire message."""


# \Z, not $: "$" also matches before a trailing newline (found by fuzzing).
PeerId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}\Z")]
"""A peer id: a lowercase DNS-label-like token, safe in subjects and KV keys."""

MeshIp = Annotated[str, msgspec.Meta(max_length=45)]
"""An IPv4 or IPv6 address as text; semantic checks happen where it is used."""

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Count = Annotated[int, msgspec.Meta(ge=0)]
