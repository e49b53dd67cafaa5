"""``-L``/``-R`` specifications parse exactly as OpenSSH's ``parse_forward`` does."""

from __future__ import annotations

import pytest

from meshssh_cli.ssh.forward_spec import ForwardSpec, ForwardSpecError, parse_forward


@pytest.mark.parametrize(
    ("spec", "remote", "expected"),
    [
        ("8080:db:5432", False, ForwardSpec(None, 8080, None, "db", 5432)),
        ("127.0.0.1:8080:db:5432", False, ForwardSpec("127.0.0.1", 8080, None, "db", 5432)),
        ("*:8080:db:5432", False, ForwardSpec("*", 8080, None, "db", 5432)),
        (":8080:db:5432", False, ForwardSpec("", 8080, None, "db", 5432)),
        ("[::1]:8080:[fd00::7]:80", False, ForwardSpec("::1", 8080, None, "fd00::7", 80)),
        ("8080:[2001:db8::1]:443", False, ForwardSpec(None, 8080, None, "2001:db8::1", 443)),
        ("0:localhost:22", True, ForwardSpec(None, 0, None, "localhost", 22)),
        ("8080:localhost:http", False, ForwardSpec(None, 8080, None, "localhost", 80)),
        ("8080:/run/app.sock", False, ForwardSpec(None, 8080, None, None, None, "/run/app.sock")),
        ("lo:8080:/run/a.sock", False, ForwardSpec("lo", 8080, None, None, None, "/run/a.sock")),
        ("/tmp/l.sock:db:5432", False, ForwardSpec(None, None, "/tmp/l.sock", "db", 5432)),
        (
            "/tmp/l.sock:/run/r.sock",
            True,
            ForwardSpec(None, None, "/tmp/l.sock", None, None, "/run/r.sock"),
        ),
        ("  8080:db:5432", False, ForwardSpec(None, 8080, None, "db", 5432)),
        (r"8080:we\:ird:80", False, ForwardSpec(None, 8080, None, "we:ird", 80)),
    ],
)
def test_valid_specs_parse_like_openssh(spec: str, remote: bool, expected: ForwardSpec) -> None:
    assert parse_forward(spec, remote=remote) == expected


@pytest.mark.parametrize(
    ("spec", "remote"),
    [
        ("8080", False),  # dynamic form: not for -L/-R
        ("127.0.0.1:8080", False),
        ("0:db:5432", False),  # listen port 0 only for -R
        ("8080:db:0", True),  # destination port 0
        ("8080:db:65536", False),
        ("8080:db:nosuchservice", False),
        ("a:b:c:d:e", False),
        ("[::1:8080:db:80", False),
        ("[::1]x:8080:db:80", False),
        ("8080::80", False),  # empty destination host
        ("8080:db:5432\\", False),
        ("", False),
    ],
)
def test_invalid_specs_are_refused(spec: str, remote: bool) -> None:
    with pytest.raises(ForwardSpecError):
        parse_forward(spec, remote=remote)


@pytest.mark.parametrize(
    ("spec", "bind"),
    [
        ("8080:db:1", "localhost"),
        ("*:8080:db:1", ""),
        (":8080:db:1", ""),
        ("10.0.0.1:8080:db:1", "10.0.0.1"),
    ],
)
def test_the_bind_address_defaults_to_loopback_and_star_means_all(spec: str, bind: str) -> None:
    assert parse_forward(spec, remote=False).bind_host() == bind
