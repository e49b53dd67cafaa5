"""The v1 wire messages of meshssh: every NATS payload, defined once (SPEC §5).

Rules: messages are frozen, tagged ``<service>.<name>.v<N>`` msgspec Structs; nested values are
untagged :class:`Part`s; new fields always get defaults and are never retyped; tags are never
reused; unknown fields are ignored (never ``forbid_unknown_fields``).
"""

from meshssh_common.wire.audit import AuditEvent, AuditKind
from meshssh_common.wire.authn import (
    EXCHANGE_AUDIENCE_PREFIX,
    JWT_TOKEN_TYPE,
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
    JwksMissed,
    JwksRefreshReply,
    JwksRefreshRequest,
    JwksSnapshot,
    OidcClientConfig,
    TokenExchangeReply,
    TokenExchangeRequest,
    peer_audience,
)
from meshssh_common.wire.base import Part, Wire
from meshssh_common.wire.gateway import (
    TICKET_TTL,
    GatewayTicket,
    RefusalReason,
    TicketGrant,
    TicketRedeem,
    TicketRefusal,
)
from meshssh_common.wire.netmap import (
    FirewallRule,
    JwtConfig,
    MapDelta,
    MapDoc,
    NetworkMap,
    PeerConfig,
    PortRange,
    RemotePeer,
    SessionRules,
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
from meshssh_common.wire.signed import DocKind, Endorsement, Pins, SignedDoc

__all__ = [
    "EXCHANGE_AUDIENCE_PREFIX",
    "JWT_TOKEN_TYPE",
    "TICKET_TTL",
    "AuditEvent",
    "AuditKind",
    "DevicePollReply",
    "DevicePollRequest",
    "DeviceStartReply",
    "DeviceStartRequest",
    "DocKind",
    "Endorsement",
    "FirewallRule",
    "GatewayTicket",
    "Heartbeat",
    "JwksMissed",
    "JwksRefreshReply",
    "JwksRefreshRequest",
    "JwksSnapshot",
    "JwtConfig",
    "MapDelta",
    "MapDoc",
    "MetaReply",
    "MetaUpdate",
    "NetworkMap",
    "OidcClientConfig",
    "Part",
    "PeerConfig",
    "PeerFlags",
    "PeerMeta",
    "Pins",
    "PortRange",
    "RefusalReason",
    "RegisterReply",
    "RegisterRequest",
    "RemotePeer",
    "SessionInfo",
    "SessionRules",
    "SessionsReport",
    "SignedDoc",
    "SourcePeer",
    "SshAuth",
    "TicketGrant",
    "TicketRedeem",
    "TicketRefusal",
    "TokenExchangeReply",
    "TokenExchangeRequest",
    "Wire",
    "peer_audience",
]
