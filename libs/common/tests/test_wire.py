"""Wire messages round-trip, reject bad payloads, and never reuse a tag."""

from __future__ import annotations

import msgspec
import pytest

from meshssh_common import codec, wire
from meshssh_common.errors import WireError

JWT = wire.JwtConfig(issuer="http://127.0.0.1:8081", audiences=("meshssh",))
NETMAP = wire.NetworkMap(
    serial=3,
    peer=wire.PeerConfig(
        id="p1",
        name="srv",
        mesh_ip="100.64.0.1",
        mesh_prefix="100.64.0.0/10",
        ssh_enabled=True,
        jwt=JWT,
    ),
    firewall_rules=(
        wire.FirewallRule(
            sources=("100.64.0.2/32",), protocol="tcp", action="accept", policy_id="pol1", port="22"
        ),
        wire.FirewallRule(
            sources=("100.64.0.0/10",),
            protocol="tcp",
            action="accept",
            policy_id="pol1",
            port_range=wire.PortRange(start=20, end=30),
        ),
    ),
    remote_peers=(
        wire.RemotePeer(
            id="p2", name="laptop", mesh_ip="100.64.0.2", ssh_host_key="ssh-ed25519 AAAA"
        ),
    ),
    ssh_auth=wire.SshAuth(authorized_users=("00" * 16,), machine_users={"*": (0,)}),
)

EXAMPLES: list[wire.Wire] = [
    NETMAP,
    wire.RegisterRequest(
        name="srv",
        mesh_ip="100.64.0.1",
        setup_key="k",
        meta=wire.PeerMeta(
            version="0.1.0",
            capabilities=("native_ssh",),
            flags=wire.PeerFlags(server_ssh_allowed=True),
        ),
    ),
    wire.RegisterReply(peer_id="p1", credential="c", netmap=NETMAP),
    wire.MetaUpdate(peer_id="p1", credential="c", meta=wire.PeerMeta(version="0.60.0-rc1")),
    wire.MetaReply(serial=4),
    wire.Heartbeat(
        peer_id="p1", sent_at=1.5, sessions=(wire.SessionInfo(session_id="s", local_user="u"),)
    ),
    wire.JwksSnapshot(jwt=JWT, keys=({"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k1"},)),
    wire.JwksRefreshRequest(kid="k9"),
    wire.JwksRefreshReply(fetched=True, key_ids=("k1",)),
    wire.DeviceStartRequest(peer_id="p1"),
    wire.DeviceStartReply(device_code="d", user_code="ABCD-EFGH", verification_uri="http://x"),
    wire.DevicePollRequest(device_code="d"),
    wire.DevicePollReply(status="ok", token="t"),
    wire.AuditEvent(kind="session-start", peer_id="p1", at=1.0, local_user="alice"),
    wire.GatewayTicket(
        sub="u1",
        idp_token="eyJ",
        peer_id="p1",
        local_user="alice",
        session_hash="0" * 64,
        issued_at=1.0,
        expires_at=61.0,
    ),
    wire.TicketRedeem(ticket="t", session="s", browser_addr="127.0.0.1"),
    wire.TicketGrant(
        sub="u1",
        idp_token="eyJ",
        peer_id="p1",
        mesh_ip="100.64.0.1",
        ssh_port=22022,
        local_user="alice",
    ),
    wire.TicketRefusal(reason="expired", message="the ticket has expired"),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_wire_message_round_trips(msg: wire.Wire) -> None:
    data = codec.encode(msg)
    assert codec.decode(data, type(msg)) == msg
    assert msgspec.json.decode(data)["type"] == type(msg).__struct_config__.tag


def test_tags_are_unique_and_versioned() -> None:
    tags = [cls.__struct_config__.tag for cls in wire.Wire.__subclasses__()]
    assert len(tags) == len(set(tags))
    assert all(str(t).rsplit(".", 1)[-1].startswith("v") for t in tags)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = b'{"type":"policy.meta-ack.v1","serial":2,"added_in_v2":true}'
    assert codec.decode(data, wire.MetaReply) == wire.MetaReply(serial=2)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"type":"policy.meta-ack.v1","serial":-1}',
        b'{"type":"policy.heartbeat.v1","peer_id":"Bad Id!","sent_at":1}',
        b'{"type":"policy.netmap.v1","serial":0,"peer":{}}',
        b'{"type":"authn.device-polled.v1","status":"maybe"}',
        b'{"type":"policy.meta.v1","peer_id":"p1"}',
    ],
)
def test_malformed_or_invalid_payloads_raise_wire_error(data: bytes) -> None:
    target = {
        b"policy.meta-ack": wire.MetaReply,
        b"policy.heartbeat": wire.Heartbeat,
        b"policy.netmap": wire.NetworkMap,
        b"authn.device-polled": wire.DevicePollReply,
        b"policy.meta.v1": wire.MetaUpdate,
    }
    typ = next((t for k, t in target.items() if k in data), wire.MetaReply)
    with pytest.raises(WireError):
        codec.decode(data, typ)


def test_a_message_of_another_type_is_rejected() -> None:
    with pytest.raises(WireError):
        codec.decode(codec.encode(wire.MetaReply(serial=1)), wire.Heartbeat)
