"""Messages a peer agent exchanges with the management plane (register, meta, heartbeat)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from meshssh_common.wire.base import Count, MeshIp, Part, PeerId, Port, Wire
from meshssh_common.wire.netmap import NetworkMap
from meshssh_common.wire.signed import Pins

__all__ = [
    "Heartbeat",
    "MetaReply",
    "MetaUpdate",
    "PeerFlags",
    "PeerMeta",
    "RegisterReply",
    "RegisterRequest",
    "SessionInfo",
    "SessionsReport",
]

PeerName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")]


class PeerFlags(Part, frozen=True, kw_only=True):
    """The local flags of SPEC §3 as the peer was started with them."""

    server_ssh_allowed: bool = False
    local_port_forwarding: bool = False
    remote_port_forwarding: bool = False
    sftp: bool = False
    root_login: bool = False
    disable_ssh_auth: bool = False
    jwt_cache_ttl: Count = 0
    agent_forwarding: bool = False
    # --ssh-permit-open, canonical (meshssh_common.permit_open): ("any",), ("none",) or
    # HOST:PORT entries.
    permit_open: tuple[str, ...] = ("any",)
    accept_idp_tokens: bool = False  # --accept-idp-tokens: the IdP token works directly too


class PeerMeta(Part, frozen=True, kw_only=True):
    """What a peer reports about itself; ``capabilities`` lists e.g. ``native_ssh``."""

    version: Annotated[str, msgspec.Meta(max_length=64)]
    capabilities: tuple[str, ...] = ()
    flags: PeerFlags = msgspec.field(default_factory=PeerFlags)
    hostname: str = ""
    os: str = ""
    ssh_port: Port = 0  # where its sshd listens (shown to other peers in their maps)
    relay_port: Port = 0


class RegisterRequest(Wire, tag="policy.register.v1", frozen=True, kw_only=True):
    """A peer logs in with a setup key (first time) or its peer credential (afterwards)."""

    name: PeerName
    mesh_ip: MeshIp
    meta: PeerMeta
    ssh_host_key: str = ""
    setup_key: str = ""
    peer_id: str = ""
    credential: str = ""
    nats_key: str = ""  # the peer's NATS user public key ("U..."); its seed stays on the peer


class RegisterReply(Wire, tag="policy.registered.v1", frozen=True, kw_only=True):
    """The peer's id, its credential for later logins, and its current map."""

    peer_id: PeerId
    credential: str
    netmap: NetworkMap
    nats_jwt: str = ""  # the peer's NATS user JWT for ``nats_key`` (write it as nats.creds)
    nats_expires_at: float = 0.0  # when that JWT expires (renew before)
    # The keys maps and the JWKS document are signed with (issue 15): the agent writes them to
    # ``<state-dir>/pins.json`` and replaces them at every renewal.
    pins: Pins = msgspec.field(default_factory=Pins)


class MetaUpdate(Wire, tag="policy.meta.v1", frozen=True, kw_only=True):
    """A peer reports changed flags or version."""

    peer_id: PeerId
    credential: str
    meta: PeerMeta
    ssh_host_key: str = ""


class MetaReply(Wire, tag="policy.meta-ack.v1", frozen=True, kw_only=True):
    """Acknowledges a meta update with the serial of the peer's map after it."""

    serial: Count = 0


class SessionInfo(Part, frozen=True, kw_only=True):
    """One live SSH session on a peer, for ``meshssh status -d`` and the dashboard."""

    session_id: str
    local_user: str
    jwt_user: str = ""
    source: str = ""
    command: str = ""
    started_at: float = 0.0
    forwards: tuple[str, ...] = ()


class Heartbeat(Wire, tag="policy.heartbeat.v1", frozen=True, kw_only=True):
    """Liveness from a peer, published every few seconds."""

    peer_id: PeerId
    sent_at: float
    serial: Count = 0
    ssh_running: bool = False
    relay_mode: Literal["proxy", "nftables", "off"] = "off"
    ssh_port: Port = 0
    relay_port: Port = 0
    sessions: tuple[SessionInfo, ...] = ()
    peer_mesh_ip: MeshIp = ""


class SessionsReport(Wire, tag="sshd.sessions.v1", frozen=True, kw_only=True):
    """sshd's live sessions, published on every change and every few seconds.

    The agent folds them into its heartbeat for ``meshssh status -d`` and the dashboard.
    """

    peer_id: PeerId
    sent_at: float
    sessions: tuple[SessionInfo, ...] = ()
