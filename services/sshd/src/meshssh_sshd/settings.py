"""Settings of meshssh-sshd (flags and ``MESHSSH_SSHD_*`` env variables).

The feature flags mirror the local flags of ``meshssh up`` (SPEC §3); the agent passes them
through. Every setting is also an env variable (``--enable-ssh-sftp`` is
``MESHSSH_SSHD_ENABLE_SSH_SFTP=true``; repeatable ones take a JSON list, e.g.
``MESHSSH_SSHD_SSH_PERMIT_OPEN='["127.0.0.1:5432"]'``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from meshssh_common.errors import BadRequest
from meshssh_common.permit_open import PermitOpen, PermitOpenError
from meshssh_common.settings import HostPort, ServiceSettings
from meshssh_common.subjects import token

__all__ = ["SshdSettings"]


class SshdSettings(ServiceSettings):
    """Everything meshssh-sshd can be told; ``--help`` lists each with its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSSH_SSHD_", frozen=True, populate_by_name=True, extra="forbid"
    )

    ops_listen: HostPort = Field(
        "127.0.0.1:9103", description="HOST:PORT of /healthz, /readyz and /metrics"
    )
    pins: Path | None = Field(
        None,
        description="the pins file (pins.json: the map and JWKS signing keys) the agent writes "
        "from its registration; unset or missing: no map or JWKS from the bus applies "
        "(fail closed)",
    )
    peer_id: str = Field(description="this peer's id: the key of its network map")
    listen: HostPort = Field(
        description="HOST:PORT the SSH server listens on: the mesh address and 22022"
    )
    host_key: Path = Field(
        Path("/var/lib/meshssh/sshd/ssh_host_ed25519_key"),
        description="the Ed25519 host key file (created with mode 0600 when missing)",
    )
    enable_ssh_local_port_forwarding: bool = Field(
        False, description="accept direct-tcpip channels (ssh -L, -D)"
    )
    enable_ssh_remote_port_forwarding: bool = Field(
        False, description="accept tcpip-forward requests (ssh -R)"
    )
    enable_ssh_sftp: bool = Field(False, description="serve the sftp subsystem (scp uses it)")
    enable_ssh_root: bool = Field(False, description="allow login as root")
    accept_locked_accounts: bool = Field(
        False,
        description="let accounts whose shadow password starts with '!' log in with a token, "
        "as OpenSSH does with UsePAM yes (expired accounts are still refused)",
    )
    enable_ssh_agent_forwarding: bool = Field(
        False,
        description="accept auth-agent-req (ssh -A): sessions get an agent socket that only "
        "the target user can use",
    )
    ssh_permit_open: tuple[str, ...] = Field(
        ("any",),
        description="repeatable; OpenSSH PermitOpen syntax (HOST:PORT, [V6]:PORT, *:PORT, "
        "HOST:*, any, none): where -L and -D may connect",
    )
    disable_ssh_auth: bool = Field(
        False, description="no JWT: machine identity, access by network ACL only"
    )
    accept_idp_tokens: bool = Field(
        False,
        description="also accept the identity provider's own token as the password, besides "
        "per-peer tokens (NetBird's behaviour; off: only tokens authn issued for this peer)",
    )
    replay_cache_size: int = Field(
        100_000,
        ge=1,
        description="most per-peer token ids remembered at once (each until its token "
        "expires); when full, new per-peer tokens are refused",
    )
    relay_socket: Path | None = Field(
        None,
        description="Unix socket for the relay (mode 0600 in a 0700 directory): connections "
        "there start with a PROXY v2 header naming the real client; TCP never takes one",
    )
    relay_uid: int | None = Field(
        None, ge=0, description="the only uid that may connect to --relay-socket (default: ours)"
    )
    acl_port: int = Field(
        22022, ge=1, le=65535, description="port direct connections are checked against"
    )
    relay_acl_port: int = Field(
        22, ge=1, le=65535, description="port relayed connections are checked against"
    )
    login_timeout: float = Field(
        60.0, gt=0, description="seconds a client has to authenticate before it is dropped"
    )
    proxy_header_timeout: float = Field(
        5.0, gt=0, description="seconds the relay has to send its PROXY v2 header"
    )
    max_sessions: int = Field(
        256, ge=1, description="most concurrent session channels (shells, commands, sftp)"
    )
    max_startups: int = Field(
        1024, ge=1, description="most connections not yet authenticated at once"
    )
    max_startups_per_source: int = Field(
        64, ge=1, description="most connections not yet authenticated at once from one source"
    )
    auth_failure_limit: int = Field(
        10,
        ge=1,
        description="auth failures one source may have for one user before it is refused for "
        "that user (1 s, then doubling with each further failure)",
    )
    auth_failure_source_limit: int = Field(
        50,
        ge=1,
        description="auth failures one source may have for all users together before it is "
        "refused at the gate (same backoff)",
    )
    auth_failure_window: float = Field(
        60.0, gt=0, description="seconds of quiet after which a source's failures are forgotten"
    )
    auth_backoff_max: float = Field(
        900.0, gt=0, description="longest refusal after repeated auth failures, in seconds"
    )
    browser_check_wait: float = Field(
        45.0, gt=0, description="seconds the browser check polls after the user presses Enter"
    )
    kill_grace: float = Field(
        2.0, gt=0, description="seconds between SIGTERM and SIGKILL for a dropped session"
    )
    sftp_server: Path | None = Field(
        None, description="the sftp-server binary (found in the usual places when unset)"
    )
    sessions_report_interval: float = Field(
        5.0, gt=0, description="seconds between live-session reports to the agent"
    )

    @field_validator("peer_id")
    @classmethod
    def _peer_id_is_a_token(cls, value: str) -> str:
        try:
            token(value)
        except BadRequest as e:
            raise ValueError(f"{value!r} is not a valid peer id") from e
        return value

    @field_validator("ssh_permit_open")
    @classmethod
    def _permit_open_parses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return PermitOpen.parse(value).specs
        except PermitOpenError as e:
            raise ValueError(str(e)) from e

    @property
    def permit_open(self) -> PermitOpen:
        """``ssh_permit_open`` parsed (validated when the settings were built)."""
        return PermitOpen.parse(self.ssh_permit_open)
