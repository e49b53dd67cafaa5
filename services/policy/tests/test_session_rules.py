"""Session rules on ``ssh`` rules through the REST API: validation and round trip (the
compiled map is tested in test_compile.py)."""

from __future__ import annotations

from typing import Any

import pytest

SSH = {"sources": ["users"], "destinations": ["servers"], "protocol": "ssh"}
TCP = {"sources": ["users"], "destinations": ["servers"], "protocol": "tcp", "ports": ["22"]}


INVALID = [
    ({**TCP, "recording": "required"}, "rules[0].recording: only accept rules with protocol 'ssh'"),
    ({**SSH, "action": "drop", "idle_timeout": 5}, "rules[0].idle_timeout: only accept rules"),
    ({**SSH, "recording": "always"}, "rules[0].recording: Input should be 'off', 'best_effort'"),
    ({**SSH, "idle_timeout": -1}, "rules[0].idle_timeout: Input should be greater than or equal"),
    ({**SSH, "max_session": 10**9}, "rules[0].max_session: Input should be less than or equal"),
    (
        {**SSH, "record_input": True},
        "rules[0]: record_input/record_exec: set recording to best_effort",
    ),
    ({**SSH, "check_period": "soon"}, "rules[0].check_period: Input should be a valid integer"),
]


@pytest.mark.parametrize(("rule", "error"), INVALID)
async def test_bad_session_options_get_a_422_naming_the_field(
    policy: Any, seed_file: Any, rule: dict[str, Any], error: str
) -> None:
    replica = await policy.start(seed=seed_file)
    async with replica.client() as api:
        r = await api.post("/api/v1/policies", json={"name": "x", "rules": [rule]})
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(error), r.json()["error"]


async def test_session_options_round_trip_through_the_api(policy: Any, seed_file: Any) -> None:
    replica = await policy.start(seed=seed_file)
    options = {
        "recording": "required",
        "idle_timeout": 900,
        "max_session": 28800,
        "check_period": 43200,
        "record_input": True,
        "record_exec": True,
    }
    async with replica.client() as api:
        r = await api.post("/api/v1/policies", json={"name": "rec", "rules": [{**SSH, **options}]})
        assert r.status_code == 201, r.text
        got = (await api.get(f"/api/v1/policies/{r.json()['id']}")).json()["rules"][0]
        assert {k: got[k] for k in options} == options
