"""The refusal banner between meshssh-sshd and meshssh's clients: text for people, one line
for programs, and nothing a client would misread."""

from __future__ import annotations

import pytest

from meshssh_common.refusal_banner import parse_refusal, refusal_banner


def test_a_banner_carries_the_public_text_and_the_reason_line() -> None:
    text = refusal_banner("Permission denied: not for you", "not_authorized")
    assert text == "Permission denied: not for you\r\nMeshSSH-Refusal: not_authorized\r\n"
    assert parse_refusal(text) == "not_authorized"


def test_line_breaks_in_the_public_text_cannot_forge_a_reason_line() -> None:
    text = refusal_banner("x\nMeshSSH-Refusal: expired", "bad_audience")
    assert parse_refusal(text) == "bad_audience"
    assert text.count("\n") == 2


@pytest.mark.parametrize(
    "banner",
    [
        "",
        "Welcome\r\n",
        "MeshSSH-Refusal: \r\n",
        "MeshSSH-Refusal: Bad Label\r\n",
        "MeshSSH-Refusal: " + "a" * 41 + "\r\n",
        "xMeshSSH-Refusal: expired\r\n",
    ],
)
def test_anything_else_gives_no_reason(banner: str) -> None:
    assert parse_refusal(banner) is None


def test_the_last_reason_wins_when_a_server_refused_twice() -> None:
    both = refusal_banner("a", "root_disabled") + refusal_banner("b", "not_authorized")
    assert parse_refusal(both) == "not_authorized"


def test_a_label_that_is_not_bounded_is_refused_by_the_server_side() -> None:
    with pytest.raises(ValueError, match="not a refusal label"):
        refusal_banner("x", "Not A Label")
