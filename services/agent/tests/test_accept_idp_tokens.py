"""``meshssh up --accept-idp-tokens`` (SPEC §6): off by default, carried in the peer's flags
to management and passed to meshssh-sshd."""

from __future__ import annotations

from meshssh_agent.children import sshd_argv
from meshssh_agent.settings import AgentSettings
from meshssh_common.settings import parse_settings


def config(*args: str) -> AgentSettings:
    base = ["--state-dir", "/tmp/x", "--mesh-ip", "127.0.0.2", "--name", "srv"]
    return parse_settings(AgentSettings, [*base, *args], prog="meshssh-agent")


def test_idp_tokens_are_refused_unless_the_peer_accepts_them_explicitly() -> None:
    default = config("--allow-server-ssh")
    assert not default.flags.accept_idp_tokens
    assert "--accept-idp-tokens" not in sshd_argv(default, "p1")
    accepting = config("--allow-server-ssh", "--accept-idp-tokens")
    assert accepting.flags.accept_idp_tokens
    assert "--accept-idp-tokens" in sshd_argv(accepting, "p1")
    # a flag change from `meshssh up` arrives as PeerFlags and maps back to the setting
    assert accepting.with_flags(default.flags).accept_idp_tokens is False
