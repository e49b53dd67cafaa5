"""The pure decisions, as tables: user names, the env allow-list, command summaries, the
failure limiter and the revocation reasons."""

from __future__ import annotations

import pytest

from meshssh_common.ssh_auth import build_table
from meshssh_common.wire import FirewallRule, NetworkMap, PeerConfig
from meshssh_sshd.accounts import validate_user_name
from meshssh_sshd.login_env import allowed_env, shell_argv
from meshssh_sshd.origin import Origin
from meshssh_sshd.rate_limit import FailureLimiter
from meshssh_sshd.refusal import Refused
from meshssh_sshd.revocation import revocation_reason
from meshssh_sshd.session import summarize
from meshssh_sshd.sessions import LiveConnection


@pytest.mark.parametrize("name", ["alice", "a.b_c-d", "_svc", "x" * 32, "9lives"])
def test_portable_user_names_are_accepted(name: str) -> None:
    validate_user_name(name)


@pytest.mark.parametrize(
    "name", ["", "-oProxyCommand", "x" * 33, "al ice", "al/ice", "root\n", "..", "ålice", "a:b"]
)
def test_other_user_names_are_refused(name: str) -> None:
    with pytest.raises(Refused) as err:
        validate_user_name(name)
    assert err.value.label == "bad_user"
    assert "Permission denied" in err.value.public


def test_only_allow_listed_client_env_passes() -> None:
    sent = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "LC_": "x",
        "LC_X-Y": "x",
        "TZ": "UTC",
        "PATH": "/evil",
        "LD_PRELOAD": "/x.so",
        "BASH_ENV": "/x",
        "PAGER": "less",
        "EDITOR": "v" * 5000,
    }
    assert allowed_env(sent) == {"LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "PAGER": "less"}


def test_a_shell_without_a_command_is_a_login_shell() -> None:
    from meshssh_sshd.accounts import Account

    acct = Account("a", 1000, 1000, (1000,), "/home/a", "/bin/bash", switch=True)
    assert shell_argv(acct, None) == ("/bin/bash", ("-bash",))
    assert shell_argv(acct, "ls -l") == ("/bin/bash", ("bash", "-c", "ls -l"))


@pytest.mark.parametrize(
    ("command", "summary"),
    [
        (None, "shell"),
        ("ls", "ls"),
        ("/usr/bin/cat -n secret.txt", "cat +2"),
        ("scp -t /tmp/x", "scp +2"),
        ("echo 'unbalanced", "echo +1"),
        ("", "exec"),
    ],
)
def test_commands_are_summarized_without_their_arguments(command: str | None, summary: str) -> None:
    assert summarize(command) == summary


def test_the_failure_limiter_backs_off_per_source_and_user() -> None:
    limiter = FailureLimiter(limit=3, window=10, source_limit=100, base=1.0, max_backoff=8.0)
    for t in (0.0, 1.0):
        limiter.record("a", "alice", now=t)
    assert not limiter.blocked("a", "alice", now=2.0)
    limiter.record("a", "alice", now=2.0)  # 3rd: 1 s
    assert limiter.blocked("a", "alice", now=2.5)
    assert not limiter.blocked("a", "bob", now=2.5)  # another user from the same source
    assert not limiter.blocked("b", "alice", now=2.5)  # the same user from another source
    assert not limiter.source_blocked("a", now=2.5)
    assert not limiter.blocked("a", "alice", now=3.1)
    waits = []
    t = 3.1
    for _ in range(5):  # each further failure doubles the wait, up to max_backoff
        limiter.record("a", "alice", now=t)
        start = t
        while limiter.blocked("a", "alice", now=t):
            t += 0.25
        waits.append(round(t - start, 2))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert not limiter.blocked("a", "alice", now=t + 10.1)  # quiet for the window: forgotten
    limiter.record("a", "alice", now=t + 10.2)
    assert not limiter.blocked("a", "alice", now=t + 10.3)


def test_a_success_clears_the_key_and_the_source_limit_spans_users() -> None:
    limiter = FailureLimiter(limit=2, window=60, source_limit=4)
    limiter.record("a", "alice", now=0.0)
    limiter.succeeded("a", "alice")
    limiter.record("a", "alice", now=0.1)
    assert not limiter.blocked("a", "alice", now=0.2)
    for i, user in enumerate(("u1", "u2", "u3")):
        limiter.record("a", user, now=0.3 + i / 10)
    assert limiter.source_blocked("a", now=0.7)
    assert limiter.blocked("a", "someone-else", now=0.7)
    assert not limiter.source_blocked("b", now=0.7)


def test_the_failure_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(limit=1, window=60, max_keys=100)
    for i in range(10_000):
        limiter.record(f"10.0.{i // 256}.{i % 256}", "root", now=float(i) / 1000)
    assert len(limiter) == 100
    assert limiter.blocked("10.0.39.15", "root", now=9.9995)  # the newest is still tracked
    assert not limiter.blocked("10.0.0.0", "root", now=9.9995)  # the oldest was forgotten


class _Closer:
    def revoke(self, reason: str) -> None: ...

    def shutdown(self) -> None: ...


def _map(
    *,
    sources: str = "10.0.0.0/8",
    grants: tuple[tuple[str, str], ...] = (("u", "bob"),),
    enabled: bool = True,
) -> NetworkMap:
    return NetworkMap(
        serial=1,
        peer=PeerConfig(
            id="p", name="p", mesh_ip="10.0.0.1", mesh_prefix="10.0.0.0/8", ssh_enabled=enabled
        ),
        firewall_rules=(
            FirewallRule(
                sources=(sources,), protocol="tcp", action="accept", policy_id="x", port="22022"
            ),
        ),
        ssh_auth=build_table("sub", grants),
    )


@pytest.mark.parametrize(
    ("netmap", "reason"),
    [
        (_map(), None),
        (None, "no_map"),
        (_map(enabled=False), "ssh_disabled"),
        (_map(sources="10.9.0.0/16"), "source"),
        (_map(grants=(("u", "alice"),)), "user"),
        (_map(grants=(("u", "*"),)), None),
    ],
)
def test_revocation_reasons(netmap: NetworkMap | None, reason: str | None) -> None:
    record = LiveConnection(
        "c",
        Origin("10.0.0.7", 5000, "10.0.0.1", 22022, 22022),
        _Closer(),
        local_user="bob",
        jwt_user="u",
        authenticated=True,
    )
    assert revocation_reason(netmap, record, jwt_mode=True) == reason
    if reason == "user":
        assert revocation_reason(netmap, record, jwt_mode=False) is None
