"""JSON codec for wire messages: one module-level encoder, one cached decoder per type.

JSON keeps ``nats sub`` output readable; switch to msgpack only on evidence.

Example::

    data = encode(Heartbeat(peer_id="p1", sent_at=1.0))
    hb = decode(data, Heartbeat)
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec

from meshssh_common.errors import BadReason, WireError

__all__ = ["decode", "decoder_for", "encode"]

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()


def encode(msg: Any) -> bytes:
    """Encode a wire message (or any msgspec-supported value) as JSON bytes."""
    return _ENCODER.encode(msg)


@functools.cache
def decoder_for(typ: Any) -> msgspec.json.Decoder[Any]:
    """Return the one decoder kept for ``typ`` (a Struct, a Union of tagged Structs, ...)."""
    return msgspec.json.Decoder(typ)


def decode(data: bytes | bytearray | memoryview, typ: type[T]) -> T:
    """Decode and validate ``data`` as ``typ``.

    Raises:
        WireError: the bytes are not JSON, or do not match ``typ`` (the message says where).
    """
    try:
        result: T = decoder_for(typ).decode(data)  # type: ignore[arg-type]
    except msgspec.ValidationError as e:
        raise WireError(f"invalid {getattr(typ, '__name__', typ)}: {e}") from e
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # msgspec: bad UTF-8 in a string
        raise WireError(
            f"undecodable {getattr(typ, '__name__', typ)}: {e}", reason=BadReason.UNDECODABLE
        ) from e
    return result
