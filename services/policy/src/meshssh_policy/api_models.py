"""The JSON bodies the REST API accepts, with validation that names the field (SPEC §4).

Unknown fields are refused (a typo must not be silently ignored). Cross-record checks (does
the group exist?) happen in :mod:`meshssh_policy.resources`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from meshssh_policy.records import ID_PATTERN

__all__ = [
    "GroupIn",
    "GroupPatch",
    "Id",
    "PeerPatch",
    "PolicyIn",
    "PolicyPatch",
    "PortRangeIn",
    "RuleIn",
    "SetupKeyIn",
    "SetupKeyPatch",
    "UserIn",
    "UserPatch",
]

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""Group, policy and setup-key ids: lowercase letters, digits and ``-``, at most 63."""

PortText = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,4}$")]
LocalUser = Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9._][A-Za-z0-9._-]{0,31})$")]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
PeerName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class Body(BaseModel):
    """Base of request bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class PortRangeIn(Body):
    """An inclusive port range."""

    start: int = Field(ge=1, le=65535)
    end: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> PortRangeIn:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


_DAY = 86400
_SESSION_FIELDS = (
    "recording",
    "idle_timeout",
    "max_session",
    "check_period",
    "record_input",
    "record_exec",
)


class RuleIn(Body):
    """One directional rule: ``sources`` may reach ``destinations``."""

    sources: list[Id] = Field(min_length=1)
    destinations: list[Id] = Field(min_length=1)
    protocol: Literal["all", "tcp", "udp", "icmp", "ssh"] = "all"
    ports: list[PortText] = Field(default_factory=list)
    port_ranges: list[PortRangeIn] = Field(default_factory=list)
    action: Literal["accept", "drop"] = "accept"
    authorized_groups: dict[Id, list[LocalUser]] = Field(default_factory=dict)
    # Session rules (``ssh`` rules only; 0 means no limit), see docs/access-rules.md.
    recording: Literal["off", "best_effort", "required"] = "off"
    idle_timeout: int = Field(0, ge=0, le=_DAY * 30)
    max_session: int = Field(0, ge=0, le=_DAY * 30)
    check_period: int = Field(0, ge=0, le=_DAY * 365)
    record_input: bool = False
    record_exec: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> RuleIn:
        for port in self.ports:
            if int(port) > 65535:
                raise ValueError(f"ports: {port} is not a port (1-65535)")
        if self.protocol in ("all", "icmp") and (self.ports or self.port_ranges):
            raise ValueError(f"ports: protocol {self.protocol!r} takes no ports or port_ranges")
        if self.protocol != "ssh" and self.authorized_groups:
            raise ValueError("authorized_groups: only rules with protocol 'ssh' take them")
        session = [n for n in _SESSION_FIELDS if getattr(self, n) != RuleIn.model_fields[n].default]
        if session and (self.protocol != "ssh" or self.action != "accept"):
            raise ValueError(f"{session[0]}: only accept rules with protocol 'ssh' take it")
        if (self.record_input or self.record_exec) and self.recording == "off":
            raise ValueError("record_input/record_exec: set recording to best_effort or required")
        return self


class PolicyIn(Body):
    """A policy to create or replace."""

    id: Id | None = None
    name: Name
    description: str = Field("", max_length=1024)
    enabled: bool = True
    rules: list[RuleIn] = Field(min_length=1, max_length=100)


class PolicyPatch(Body):
    """Fields of a policy to change."""

    name: Name | None = None
    description: str | None = Field(None, max_length=1024)
    enabled: bool | None = None
    rules: list[RuleIn] | None = Field(None, min_length=1, max_length=100)


class GroupIn(Body):
    """A group to create or replace."""

    id: Id | None = None
    name: str = Field("", max_length=128)
    peers: list[Id] = Field(default_factory=list)
    users: list[UserId] = Field(default_factory=list)


class GroupPatch(Body):
    """Fields of a group to change (lists replace the current ones)."""

    name: str | None = Field(None, max_length=128)
    peers: list[Id] | None = None
    users: list[UserId] | None = None


class UserIn(Body):
    """A user: ``id`` is the value of the user-id claim (``sub`` by default)."""

    id: UserId
    email: str = Field("", max_length=255)
    name: str = Field("", max_length=255)
    groups: list[Id] = Field(default_factory=list)


class UserPatch(Body):
    """Fields of a user to change."""

    email: str | None = Field(None, max_length=255)
    name: str | None = Field(None, max_length=255)


class SetupKeyIn(Body):
    """A setup key to create; ``key`` fixes its value (else a random one is returned once).

    ``expires_in`` is in seconds (0 = never); ``usage_limit`` 0 = unlimited (one-off: 1).
    """

    name: Name
    type: Literal["reusable", "one-off"] = "reusable"
    kind: Literal["peer", "gateway"] = Field(
        "peer", description="gateway: peers registered with it may redeem browser tickets"
    )
    expires_in: int = Field(30 * 86400, ge=0)
    usage_limit: int = Field(0, ge=0)
    auto_groups: list[Id] = Field(default_factory=list)
    ssh_enabled: bool = False
    key: str | None = Field(None, min_length=16, max_length=256)


class SetupKeyPatch(Body):
    """Fields of a setup key to change."""

    revoked: bool | None = None
    auto_groups: list[Id] | None = None
    name: Name | None = None


class PeerPatch(Body):
    """Admin changes to a peer: the SSH switch and its name."""

    ssh_enabled: bool | None = None
    name: PeerName | None = None
