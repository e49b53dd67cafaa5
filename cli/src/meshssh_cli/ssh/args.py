"""``meshssh ssh`` command-line parsing, the way OpenSSH's ``ssh`` parses its own.

Options come before the host and may also follow it (OpenSSH re-reads options after the
host); the first word after the host that is not an option starts the command, and ``--``
ends the options. Short options cluster (``-tt``, ``-Np2222``) and take their value attached
or as the next word (``-L8080:db:5432`` or ``-L 8080:db:5432``). For the user, the first of
``-l USER`` and ``USER@host`` wins, as in OpenSSH; the command words are joined with spaces.

Example::

    args = parse_ssh_args(["-p", "2222", "-L", "8080:db:5432", "alice@web", "uptime"])
    args.user, args.host, args.port, args.command  # ('alice', 'web', 2222, 'uptime')
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path

from meshssh_cli.ssh.forward_spec import ForwardSpec, ForwardSpecError, parse_forward

__all__ = ["USAGE", "SshArgs", "SshUsageError", "parse_ssh_args"]

USAGE = """\
usage: meshssh ssh [--state-dir DIR] [-p PORT] [-l USER] [-L SPEC]... [-R SPEC]... [-t|-tt|-T]
                   [-A|-a] [-N] [user@]host [command ...]
       meshssh ssh detect [--state-dir DIR] HOST PORT
       meshssh ssh proxy [--state-dir DIR] HOST PORT

  -p PORT     port on the peer (default 22, the relay in front of meshssh-sshd)
  -l USER     local user to log in as on the peer (default: yours)
  -L SPEC     local forward [bind_address:]port:host:hostport (repeatable; OpenSSH syntax)
  -R SPEC     remote forward [bind_address:]port:host:hostport (repeatable; port 0 = any)
  -t          request a terminal; -tt forces one even without a local terminal
  -T          never request a terminal
  -A          forward your ssh-agent ($SSH_AUTH_SOCK) to the session; -a: do not (default)
  -N          run no command (forwards only)
  --state-dir DIR  the agent's state dir (which `meshssh up` to ask for tokens and peers)

  detect      exit 0 if HOST:PORT is a MeshSSH server (JWT or not), 2 otherwise (OpenSSH Match exec)
  proxy       ProxyCommand for OpenSSH (see `meshssh config install`)
"""

_FLAGS = "tTNqAa"
_VALUED = "plLR"


class SshUsageError(ValueError):
    """A command line ``meshssh ssh`` cannot run (shown with the usage, exit 2)."""


@dataclass
class SshArgs:
    """What ``meshssh ssh`` was asked to do."""

    host: str = ""
    user: str = ""
    port: int = 22
    local: list[ForwardSpec] = field(default_factory=list)
    remote: list[ForwardSpec] = field(default_factory=list)
    tty: int = 0  # -t count; -1 for -T
    no_command: bool = False  # -N
    quiet: bool = False  # -q
    agent: bool = False  # -A (the last of -A and -a wins, as in OpenSSH)
    command: str = ""
    state_dir: Path | None = None
    help: bool = False


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise SshUsageError(f"Bad port {text!r}")
    return int(text)


def _apply(args: SshArgs, opt: str, value: str) -> None:
    if opt == "p":
        args.port = _port(value)
    elif opt == "l":
        args.user = args.user or value
    else:
        try:
            spec = parse_forward(value, remote=opt == "R")
        except ForwardSpecError as e:
            raise SshUsageError(str(e)) from None
        (args.remote if opt == "R" else args.local).append(spec)


def _flag(args: SshArgs, ch: str) -> None:
    if ch == "t":
        args.tty = max(args.tty, 0) + 1
    elif ch == "T":
        args.tty = -1
    elif ch == "N":
        args.no_command = True
    elif ch == "q":
        args.quiet = True
    elif ch in "Aa":
        args.agent = ch == "A"


def _set_host(args: SshArgs, word: str) -> None:
    user, at, host = word.rpartition("@")
    if at and not user:
        raise SshUsageError(f"Bad user in {word!r}")
    if not host:
        raise SshUsageError(f"Bad host {word!r}")
    if at:
        args.user = args.user or user
    args.host = host


def parse_ssh_args(argv: list[str]) -> SshArgs:
    """Parse ``meshssh ssh`` arguments (everything after ``ssh``).

    Raises:
        SshUsageError: an unknown option, a missing value, a bad port or forward spec, or no
            host.
    """
    args = SshArgs()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            rest = words[i:]
            if not args.host and rest:
                _set_host(args, rest.pop(0))
            args.command = " ".join(rest)
            break
        if word in ("-h", "--help"):
            args.help = True
            return args
        if word.startswith("--state-dir"):
            if word.startswith("--state-dir="):
                value = word.split("=", 1)[1]
            elif i < len(words):
                value, i = words[i], i + 1
            else:
                raise SshUsageError("--state-dir needs a value")
            args.state_dir = Path(value)
            continue
        if word.startswith("--"):
            raise SshUsageError(f"unknown option {word}")
        if word.startswith("-") and word != "-":
            j = 1
            while j < len(word):
                ch = word[j]
                if ch in _FLAGS:
                    _flag(args, ch)
                    j += 1
                elif ch in _VALUED:
                    value = word[j + 1 :]
                    if not value:
                        if i >= len(words):
                            raise SshUsageError(f"option -{ch} needs a value")
                        value, i = words[i], i + 1
                    _apply(args, ch, value)
                    break
                else:
                    raise SshUsageError(f"unknown option -{ch}")
            continue
        if not args.host:
            _set_host(args, word)
            continue
        args.command = " ".join(words[i - 1 :])
        break
    if not args.host:
        raise SshUsageError("no host given")
    if args.no_command and args.command:
        raise SshUsageError("-N runs no command, but a command was given")
    args.user = args.user or getpass.getuser()
    return args
