"""Subjects are built only from validated tokens."""

from __future__ import annotations

import pytest

from meshssh_common import subjects
from meshssh_common.errors import BadRequest


def test_builders_follow_the_grammar() -> None:
    assert subjects.heartbeat("peer-1") == "meshssh.policy.v1.evt.heartbeat.peer-1"
    assert subjects.netmap_key("peer-1") == "peer.peer-1"
    assert subjects.audit_event("session-start", "p1") == "meshssh.audit.v1.evt.session-start.p1"
    assert subjects.gateway_ticket("gw-1") == "meshssh.policy.v1.req.gateway-ticket.gw-1"
    assert subjects.gateway_ticket_key("ab" * 32) == "t." + "ab" * 32


@pytest.mark.parametrize("bad", ["", "a.b", "*", ">", "a b", "x" * 65, "a\nb", "ä", "peer-1\n"])
def test_tokens_that_would_change_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(BadRequest):
        subjects.heartbeat(bad)
