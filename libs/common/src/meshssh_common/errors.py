"""The error tree of meshssh: one root, a fixed ``code`` per class, translated only at boundaries.

Every error raised on purpose is a :class:`MeshError`. Its ``code`` travels over NATS in the
``Nats-Service-Error-Code`` header, and :func:`error_for_code` turns it back into the same class
on the requesting side, so ``except Denied`` works across a process boundary.

Example::

    with nats_boundary(subjects.POLICY_META):
        msg = await nc.request(subjects.POLICY_META, payload, timeout=2)
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from typing import ClassVar

import msgspec

__all__ = [
    "BadReason",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Denied",
    "MeshError",
    "NotFound",
    "RateLimited",
    "RemoteError",
    "Unavailable",
    "WireError",
    "error_for_code",
    "nats_boundary",
]


class MeshError(Exception):
    """Root of every error raised on purpose. ``code`` travels as Nats-Service-Error-Code."""

    code: ClassVar[str] = "internal"

    @property
    def public(self) -> str:
        """The text a remote party may see; subclasses that hide detail override it."""
        return str(self)


class ConfigError(MeshError):
    """A setting is missing or invalid; services exit 2 on it."""

    code = "config"

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class BadReason(enum.StrEnum):
    """Why a payload was rejected before use (the ``reason`` label of ``bad_messages``)."""

    UNDECODABLE = "undecodable"  # not JSON
    INVALID = "invalid"  # wrong shape or value
    BAD_TOKEN = "bad_token"  # a credential that does not verify


class WireError(MeshError):
    """An undecodable or invalid payload; ``reason`` is a bounded metric label."""

    code = "bad_message"

    def __init__(self, message: str, *, reason: BadReason = BadReason.INVALID) -> None:
        super().__init__(message)
        self.reason = reason


class BadRequest(MeshError):
    """A well-formed request that asks for something invalid (bad field value)."""

    code = "bad_request"


class NotFound(MeshError):
    """The named thing does not exist."""

    code = "not_found"


class Conflict(MeshError):
    """A write lost a compare-and-set race, or the thing already exists."""

    code = "conflict"


class RateLimited(MeshError):
    """Too many attempts; try again later."""

    code = "rate_limited"


class Unavailable(MeshError):
    """A dependency did not answer: timeout, no responders, draining."""

    code = "unavailable"


class Denied(MeshError):
    """Access refused. ``reason`` is logged; only ``public`` may be shown to the peer."""

    code = "denied"

    def __init__(self, reason: str, *, public: str = "access denied") -> None:
        super().__init__(reason)
        self.reason = reason
        self._public = public

    @property
    def public(self) -> str:
        """The only text a peer may see."""
        return self._public


class RemoteError(MeshError):
    """An error reply whose code this side does not know."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.remote_code = code
        self.description = description


_BY_CODE: dict[str, type[MeshError]] = {
    cls.code: cls for cls in (WireError, BadRequest, NotFound, Conflict, RateLimited, Unavailable)
}


def error_for_code(code: str, description: str) -> MeshError:
    """Rebuild the typed error for a ``Nats-Service-Error-Code`` received in a reply.

    Args:
        code: the value of the Nats-Service-Error-Code header.
        description: the value of the Nats-Service-Error header.

    Returns:
        An instance of the class that owns ``code``, else :class:`RemoteError`.
    """
    if code == Denied.code:
        return Denied(description, public=description)
    if code == ConfigError.code:
        return ConfigError("remote", description)
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(code, description)
    return cls(description)


@contextlib.contextmanager
def nats_boundary(subject: str) -> Iterator[None]:
    """Translate nats-py and msgspec exceptions raised inside into :class:`MeshError`.

    Args:
        subject: named in the translated error's message.

    Raises:
        Unavailable: no responders, a timeout, or a closed or draining connection.
        WireError: a reply that does not decode into the expected type.
    """
    # Imported here, not at the top: every CLI process imports this module, and nats-py
    # costs ~50 ms of import (`meshssh ssh proxy` starts for every OpenSSH connection).
    import nats.errors

    try:
        yield
    except nats.errors.NoRespondersError as e:  # before TimeoutError: order matters
        raise Unavailable(f"no responders on {subject}") from e
    except nats.errors.TimeoutError as e:
        raise Unavailable(f"timeout on {subject}") from e
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as e:
        raise Unavailable(f"connection closed while using {subject}") from e
    except msgspec.ValidationError as e:
        raise WireError(f"{subject}: invalid payload: {e}") from e
    except msgspec.DecodeError as e:
        raise WireError(f"{subject}: undecodable payload: {e}", reason=BadReason.UNDECODABLE) from e
