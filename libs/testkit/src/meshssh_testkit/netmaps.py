"""Network maps for tests: build one with a few rules, store it where peers watch it.

Tests that exercise a peer before (or without) the management plane write the peer's map into
the ``meshssh-netmaps`` bucket themselves, exactly as meshssh-policy publishes it: signed (by
:func:`meshssh_testkit.signing.map_signer` unless told otherwise), so the peer processes need
``--pins`` (:func:`meshssh_testkit.signing.write_test_pins`).

Example::

    await put_map(nc, make_map(1, peer_id="p1", mesh_ip="127.0.0.2", sources=["127.0.0.3/32"]))
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.kv import TypedKV, open_bucket
from meshssh_common.signed_doc import Signer
from meshssh_common.wire import FirewallRule, NetworkMap, PeerConfig, RemotePeer
from meshssh_testkit.signing import map_signer

__all__ = ["make_map", "put_map"]


def make_map(
    serial: int,
    *,
    peer_id: str = "p1",
    mesh_ip: str = "127.0.0.2",
    mesh_prefix: str = "127.0.0.0/8",
    ssh_enabled: bool = True,
    sources: Sequence[str] = ("127.0.0.3/32",),
    ports: Sequence[str] = ("22", "22022"),
    remote_peers: Sequence[RemotePeer] = (),
) -> NetworkMap:
    """A map for ``peer_id`` whose inbound rules accept ``sources`` on TCP ``ports``."""
    rules = tuple(
        FirewallRule(
            sources=tuple(sources), protocol="tcp", action="accept", policy_id="pol", port=port
        )
        for port in ports
        if sources
    )
    peer = PeerConfig(
        id=peer_id, name=peer_id, mesh_ip=mesh_ip, mesh_prefix=mesh_prefix, ssh_enabled=ssh_enabled
    )
    return NetworkMap(
        serial=serial, peer=peer, firewall_rules=rules, remote_peers=tuple(remote_peers)
    )


async def put_map(nc: NATS, netmap: NetworkMap, signer: Signer | None = None) -> None:
    """Store ``netmap`` signed under its peer's key (creating the bucket if needed)."""
    bucket = await open_bucket(nc.jetstream(), subjects.BUCKET_NETMAPS)
    kv = TypedKV(bucket, NetworkMap, signer=signer or map_signer())
    await kv.put(subjects.netmap_key(netmap.peer.id), netmap)
