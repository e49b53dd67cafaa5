"""The real management plane for peer tests: a ``meshssh-policy`` process with a small seed.

The seed is the demo's: groups ``servers`` and ``users``, a setup key for each
(:data:`SERVER_KEY` puts a peer into ``servers`` with SSH enabled, :data:`LAPTOP_KEY` into
``users``), and one policy: ``users`` reach ``servers`` on TCP 22 (and so 22022). A test runs
its agent with ``--setup-key SERVER_KEY``; a client address gets a rule by registering as a
laptop with :meth:`Management.register` (over REST, as an agent registers), and an address
that never registered has none. Policy signs peers' NATS JWTs and revocations with the
server's bus keys (``--bus-keys``).

Example::

    policy = await Management.start(services, nats_server, nc, tmp_path, mesh_prefix="127.0.0.0/8")
    await policy.register("laptop", "127.0.0.3")
    ...  # meshssh up --setup-key SERVER_KEY --name server ...
    await policy.patch_peer("server", ssh_enabled=False)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
from nats.aio.client import Client as NATS

from meshssh_common import codec
from meshssh_common.bus_keys import BusKeys
from meshssh_common.nats_jwt import Prefix, new_key
from meshssh_common.wire import PeerFlags, PeerMeta, RegisterReply, RegisterRequest
from meshssh_testkit.natsd import NatsServer
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.process import ServiceProcess

__all__ = ["LAPTOP_KEY", "SERVER_KEY", "Management"]

SERVER_KEY = "meshssh-test-server-key-0001"
LAPTOP_KEY = "meshssh-test-laptop-key-0001"
ADMIN_TOKEN = "meshssh-test-admin-token-0123456789"

_SEED: dict[str, Any] = {
    "groups": [{"id": "servers", "name": "Servers"}, {"id": "users", "name": "Users"}],
    "setup_keys": [
        {
            "key": SERVER_KEY,
            "name": "servers",
            "type": "reusable",
            "expires_in": 0,
            "auto_groups": ["servers"],
            "ssh_enabled": True,
        },
        {
            "key": LAPTOP_KEY,
            "name": "laptops",
            "type": "reusable",
            "expires_in": 0,
            "auto_groups": ["users"],
        },
    ],
    "policies": [
        {
            "id": "users-to-servers-ssh",
            "name": "users reach servers on TCP 22",
            "rules": [
                {
                    "sources": ["users"],
                    "destinations": ["servers"],
                    "protocol": "tcp",
                    "ports": ["22"],
                    "action": "accept",
                }
            ],
        },
    ],
}


@dataclass
class Management:
    """A running meshssh-policy: its REST API and the NATS client peers register with."""

    process: ServiceProcess
    api: str
    nc: NATS
    bus: BusKeys  # what policy signs peers' JWTs with (``bus.account``, ``bus.mint``)

    @classmethod
    async def start(
        cls,
        services: ServiceFactory,
        nats: NatsServer,
        nc: NATS,
        directory: Path,
        *,
        mesh_prefix: str = "127.0.0.0/8",
        bus_keys: Path | None = None,
    ) -> Management:
        """Start meshssh-policy as the policy identity, with the seed in ``directory``.

        ``bus_keys``: the bus directory policy signs with (None: the server's, or for an open
        server one made in ``directory``).
        """
        directory.mkdir(parents=True, exist_ok=True)
        seed = directory / "policy-seed.json"
        seed.write_text(json.dumps(_SEED))
        if bus_keys is None and nats.keys is not None:
            bus_keys = nats.keys.dir
        if bus_keys is None:
            bus_keys = directory / "bus"
            if not (bus_keys / "meta.json").exists():
                BusKeys.create(bus_keys)
        proc = await services.start(
            "meshssh-policy",
            *nats.flags("policy"),
            "--listen",
            "127.0.0.1:0",
            "--seed",
            str(seed),
            "--mesh-prefix",
            mesh_prefix,
            "--bus-keys",
            str(bus_keys),
            env={"MESHSSH_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        found = re.search(r"api listening.*url=(http://\S+)", proc.output())
        assert found, proc.output()
        return cls(proc, found[1], nc, BusKeys.load(bus_keys))

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One REST call (``path`` below ``/api/v1``); fails the test on a non-2xx answer."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=self.api, headers=headers, timeout=10) as http:
            reply = await http.request(method, f"/api/v1{path}", json=body)
        assert reply.is_success, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json() if reply.content else None

    async def peer(self, name: str) -> dict[str, Any]:
        """The peer called ``name``, as the API shows it."""
        peers: list[dict[str, Any]] = await self.call("GET", "/peers")
        found = [p for p in peers if p["name"] == name]
        assert found, f"no peer {name!r} among {[p['name'] for p in peers]}"
        return found[0]

    async def patch_peer(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change a peer as an operator does (``ssh_enabled=False``: the dashboard switch)."""
        peer_id = (await self.peer(name))["id"]
        patched: dict[str, Any] = await self.call("PATCH", f"/peers/{peer_id}", changes)
        return patched

    async def delete_peer(self, name: str) -> None:
        """Remove a peer as an operator does."""
        await self.call("DELETE", f"/peers/{(await self.peer(name))['id']}")

    async def register(
        self,
        name: str,
        mesh_ip: str,
        key: str = LAPTOP_KEY,
        *,
        host_key: str | None = None,
        ssh_port: int = 0,
        relay_port: int = 0,
    ) -> RegisterReply:
        """Register a peer that runs no agent (a client address, or a server other peers see).

        ``host_key``: its SSH host key line (None: a fresh one; ``""``: none). ``ssh_port``,
        ``relay_port``: the ports it reports (other peers' maps carry them; 0: unknown).
        """
        if host_key is None:
            fresh = asyncssh.generate_private_key("ssh-ed25519").export_public_key()
            host_key = fresh.decode().strip()
        meta = PeerMeta(
            version="0.1.0",
            capabilities=("native_ssh",),
            flags=PeerFlags(server_ssh_allowed=key == SERVER_KEY),
            ssh_port=ssh_port,
            relay_port=relay_port,
        )
        req = RegisterRequest(
            name=name,
            mesh_ip=mesh_ip,
            meta=meta,
            setup_key=key,
            ssh_host_key=host_key,
            nats_key=new_key(Prefix.USER).public,
        )
        async with httpx.AsyncClient(base_url=self.api, timeout=15) as http:
            reply = await http.post("/api/v1/peers/register", content=codec.encode(req))
        assert reply.status_code == 200, f"register {name}: {reply.status_code} {reply.text}"
        return codec.decode(reply.content, RegisterReply)
