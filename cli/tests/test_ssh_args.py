"""``meshssh ssh`` reads its command line the way OpenSSH's ssh does."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from meshssh_cli.ssh.args import SshUsageError, parse_ssh_args
from meshssh_cli.ssh.forward_spec import ForwardSpec


def test_options_host_and_command_words() -> None:
    args = parse_ssh_args(
        [
            "-p",
            "2222",
            "-L",
            "8080:db:5432",
            "-L9090:[::1]:80",
            "-R",
            "0:lo:22",
            "alice@web",
            "uptime",
            "-a",
        ]
    )
    assert (args.user, args.host, args.port, args.command) == ("alice", "web", 2222, "uptime -a")
    assert args.local == [
        ForwardSpec(None, 8080, None, "db", 5432),
        ForwardSpec(None, 9090, None, "::1", 80),
    ]
    assert args.remote == [ForwardSpec(None, 0, None, "lo", 22)]


def test_options_after_the_host_are_still_options_until_the_command() -> None:
    args = parse_ssh_args(["web", "-p", "22", "-tt", "ls", "-l", "-p"])
    assert (args.host, args.port, args.tty, args.command) == ("web", 22, 2, "ls -l -p")


def test_double_dash_ends_options() -> None:
    args = parse_ssh_args(["-T", "--", "web", "-p", "x"])
    assert (args.host, args.tty, args.command) == ("web", -1, "-p x")


def test_clustered_flags_and_attached_values() -> None:
    args = parse_ssh_args(["-Np2200", "-lbob", "web"])
    assert (args.no_command, args.port, args.user) == (True, 2200, "bob")


def test_the_first_user_given_wins_and_the_default_is_the_local_user() -> None:
    assert parse_ssh_args(["-l", "first", "second@web"]).user == "first"
    assert parse_ssh_args(["first@web", "-l", "second"]).user == "first"
    assert parse_ssh_args(["web"]).user == getpass.getuser()


def test_A_forwards_the_agent_and_the_last_of_A_and_a_wins() -> None:
    assert parse_ssh_args(["web"]).agent is False
    assert parse_ssh_args(["-A", "web"]).agent is True
    assert parse_ssh_args(["-tA", "web", "ssh-add -l"]).agent is True
    assert parse_ssh_args(["-A", "web", "-a"]).agent is False


def test_state_dir_in_both_spellings() -> None:
    assert parse_ssh_args(["--state-dir", "/s", "web"]).state_dir == Path("/s")
    assert parse_ssh_args(["--state-dir=/t", "web"]).state_dir == Path("/t")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-p"],
        ["-p", "x", "web"],
        ["-p", "70000", "web"],
        ["-Z", "web"],
        ["--bogus", "web"],
        ["-L", "nope", "web"],
        ["@web"],
        ["user@"],
        ["-N", "web", "cmd"],
        ["--state-dir"],
    ],
)
def test_bad_command_lines_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SshUsageError):
        parse_ssh_args(argv)
