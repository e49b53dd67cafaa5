"""The v1 wire messages of meshssh: every NATS payload, defined once (SPEC §5).

Rules: messages are frozen, tagged ``<service>.<name>.v<N>`` msgspec Structs; nested values are
untagged :class:`Part`s; new fields always get defaults and are never retyped; tags are never
reused; unknown fields are ignored (never ``forbid_unknown_fields``).
"""

from meshssh_common.wire.audit import AuditEvent, AuditKind
from meshssh_common.wire.authn import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
    JwksMissed,
    JwksRefreshReply,
    JwksRefreshRequest,
    JwksSnapshot,
    OidcClientConfig,
)
from meshssh_common.wire.base import Part, Wire
from meshssh_common.wire.netmap import (
    FirewallRule,
    JwtConfig,
    NetworkMap,
    PeerConfig,
    PortRange,
    RemotePeer,
    SourcePeer,
    SshAuth,
)
from meshssh_common.wire.peer import (
    Heartbeat,
    MetaReply,
    MetaUpdate,
    PeerFlags,
    PeerMeta,
    RegisterReply,
    RegisterRequest,
    SessionInfo,
    SessionsReport,
)

__all__ = [
    "AuditEvent",
    "AuditKind",
    "DevicePollReply",
    "DevicePollRequest",
    "DeviceStartReply",
    "DeviceStartRequest",
    "FirewallRule",
    "Heartbeat",
    "JwksMissed",
    "JwksRefreshReply",
    "JwksRefreshRequest",
    "JwksSnapshot",
    "JwtConfig",
    "MetaReply",
    "MetaUpdate",
    "NetworkMap",
    "OidcClientConfig",
    "Part",
    "PeerConfig",
    "PeerFlags",
    "PeerMeta",
    "PortRange",
    "RegisterReply",
    "RegisterRequest",
    "RemotePeer",
    "SessionInfo",
    "SessionsReport",
    "SourcePeer",
    "SshAuth",
    "Wire",
]
