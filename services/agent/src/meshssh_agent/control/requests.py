"""What the agent answers on its socket: status, down, configure and the per-uid tokens.

Each handler gets the request and the kernel-reported caller (see ``agent_socket``). Control
calls (``down``, ``configure``) are refused to anyone but root and the agent's own user;
token calls only ever touch the caller's own slot.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from meshssh_agent.control.server import Caller, Send
from meshssh_agent.settings import Flags
from meshssh_agent.supervisor import Child
from meshssh_common.errors import MeshError
from meshssh_common.oidc_device import DeviceAuthorization
from meshssh_common.version import VERSION
from meshssh_common.wire.agent import (
    AgentStatus,
    ChildStatus,
    ConfigureRequest,
    DownRequest,
    ErrorReply,
    OkReply,
    PeerStatus,
    PromptReply,
    Reply,
    Request,
    StatusReply,
    StatusRequest,
    TokenDropRequest,
    TokenGetRequest,
    TokenPutRequest,
    TokenReply,
)

if TYPE_CHECKING:
    from meshssh_agent.agent import Agent

__all__ = ["AgentRequests"]


def _child(child: Child) -> ChildStatus:
    return ChildStatus(
        name=child.name,
        state=child.state,
        wanted=child.desired,
        pid=child.pid or 0,
        restarts=child.restarts,
        last_exit=child.last_exit,
        last_error=child.last_error,
        ops_url=child.ops_url,
    )


class AgentRequests:
    """The socket handler of one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def handle(self, request: Request, caller: Caller, send: Send) -> Reply:
        """Answer one request from ``caller`` (``send`` writes intermediate lines)."""
        match request:
            case StatusRequest(detail=detail):
                return StatusReply(status=self.status(detail=detail))
            case DownRequest():
                if not caller.may_control():
                    return _denied(caller, "stop the agent")
                self.agent.log.info("down requested", extra={"uid": caller.uid, "pid": caller.pid})
                self.agent.stop.set()
                return OkReply(message="stopping")
            case ConfigureRequest(flags=flags):
                if not caller.may_control():
                    return _denied(caller, "change the agent's flags")
                new = Flags(
                    allow_server_ssh=flags.server_ssh_allowed,
                    local_port_forwarding=flags.local_port_forwarding,
                    remote_port_forwarding=flags.remote_port_forwarding,
                    sftp=flags.sftp,
                    root_login=flags.root_login,
                    disable_ssh_auth=flags.disable_ssh_auth,
                    jwt_cache_ttl=flags.jwt_cache_ttl,
                    agent_forwarding=flags.agent_forwarding,
                )
                try:
                    serial = await self.agent.reconfigure(self.agent.config.with_flags(new))
                except MeshError as e:
                    return ErrorReply(code=e.code, message=f"flags applied locally; {e.public}")
                return OkReply(message=f"flags updated (map serial {serial})")
            case TokenGetRequest(login=login):
                entry = self.agent.tokens.peek(caller.uid)
                if entry is not None:
                    return TokenReply(token=entry.token, expires_at=entry.valid_until, cached=True)
                if not login:
                    return TokenReply()
                return await self._login(caller, send)
            case TokenPutRequest(token=token):
                entry = self.agent.tokens.put(caller.uid, token)
                if entry is None:
                    return TokenReply(cached=False)
                return TokenReply(expires_at=entry.valid_until, cached=True)
            case TokenDropRequest():
                self.agent.tokens.invalidate(caller.uid)
                return OkReply(message="forgotten")
        return ErrorReply(code="bad_request", message="unknown request")

    async def _login(self, caller: Caller, send: Send) -> Reply:
        """Run or join the caller's device flow; the prompt goes out before the token."""
        prompts: list[asyncio.Future[None]] = []

        def on_prompt(auth: DeviceAuthorization) -> None:
            prompt = PromptReply(
                url=auth.verification_uri,
                code=auth.user_code,
                url_complete=auth.verification_uri_complete,
                expires_in=auth.expires_in,
            )
            prompts.append(asyncio.ensure_future(send(prompt)))

        self.agent.log.info("login requested", extra={"uid": caller.uid, "pid": caller.pid})
        try:
            token = await self.agent.tokens.get(caller.uid, on_prompt=on_prompt)
        except asyncio.CancelledError:
            self.agent.log.info("login abandoned by its caller", extra={"uid": caller.uid})
            raise
        finally:
            await asyncio.gather(*prompts, return_exceptions=True)
        entry = self.agent.tokens.peek(caller.uid)
        return TokenReply(token=token, expires_at=entry.valid_until if entry else 0.0,
                          cached=entry is not None)  # fmt: skip

    def status(self, *, detail: bool) -> AgentStatus:
        """The agent's state; ``detail`` adds children, peers and sessions."""
        a = self.agent
        netmap = a.maps.current
        peers: tuple[PeerStatus, ...] = ()
        if detail and netmap is not None:
            peers = tuple(
                PeerStatus(
                    id=p.id,
                    name=p.name,
                    mesh_ip=p.mesh_ip,
                    ssh_enabled=p.ssh_enabled,
                    online=a.online(p.id),
                    host_key=p.ssh_host_key,
                )
                for p in netmap.remote_peers
            )
        return AgentStatus(
            pid=os.getpid(),
            version=VERSION,
            state_dir=str(a.config.state_dir),
            name=a.config.name,
            mesh_ip=a.config.mesh_ip,
            management_url=a.config.management_url,
            nats_url=a.config.nats_url,
            nats_connected=bool(a.nc is not None and a.nc.is_connected),
            registered=a.registered,
            register_error=a.register_error,
            peer_id=a.peer_id,
            serial=a.maps.serial,
            flags=a.config.flags.wire(),
            ssh_enabled=a.ssh_enabled,
            ssh_running=a.sshd.state == "running",
            ssh_port=a.ssh_port,
            relay_mode=a.relay_mode.mode,
            relay_mode_reason=a.relay_mode.reason,
            relay_port=a.relay_port,
            relay_running=a.relay.state == "running",
            native_upstream=a.config.native_upstream,
            children=(_child(a.sshd), _child(a.relay)),
            peers=peers,
            sessions=a.sessions if detail else (),
        )


def _denied(caller: Caller, what: str) -> ErrorReply:
    return ErrorReply(
        code="denied",
        message=f"uid {caller.uid} may not {what}: only root or uid {os.geteuid()} may",
    )
