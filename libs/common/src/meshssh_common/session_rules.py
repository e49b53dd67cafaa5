"""Session rules of ``ssh`` rules in the SSH authorization table (recording, time limits).

The management plane attaches each grant's :class:`SessionRules` to the peer's table
(:func:`attach`); the SSH server looks up the rules of a login (:func:`rules_for`) with the
same table it authorized it with. When several rules let a user in as a local user, the
strictest wins (:func:`strictest`): recording ``required`` over ``best_effort`` over ``off``,
the shortest non-zero limit, input and exec recorded when any rule says so. Logins through
``any_validated_user`` (legacy rules) get the rules attached to nobody: none.

Example::

    table = attach(build_table("sub", [("alice", "*")]),
                   {("alice", "*"): SessionRules(idle_timeout=900)})
    rules_for(table, "alice", "deploy").idle_timeout   # 900
    login_age_refusal(rules_for(table, "alice", "deploy"), {"iat": 0}, now=10**9)  # a text
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from meshssh_common.ssh_auth import WILDCARD, hash_user_id
from meshssh_common.wire.netmap import SessionRules, SshAuth

__all__ = ["NONE", "attach", "login_age_refusal", "rules_for", "strictest"]

NONE = SessionRules()
_RECORDING_ORDER = {"off": 0, "best_effort": 1, "required": 2}


def _shortest(values: Iterable[int]) -> int:
    limits = [v for v in values if v > 0]
    return min(limits) if limits else 0


def strictest(rules: Iterable[SessionRules]) -> SessionRules:
    """The combination of ``rules`` that is at least as strict as each of them."""
    items = list(rules)
    if not items:
        return NONE
    return SessionRules(
        recording=max((r.recording for r in items), key=_RECORDING_ORDER.__getitem__),
        idle_timeout=_shortest(r.idle_timeout for r in items),
        max_session=_shortest(r.max_session for r in items),
        check_period=_shortest(r.check_period for r in items),
        record_input=any(r.record_input for r in items),
        record_exec=any(r.record_exec for r in items),
    )


def attach(table: SshAuth, rules: Mapping[tuple[str, str], SessionRules]) -> SshAuth:
    """``table`` with the rules of its ``(user id, local user or *)`` grants.

    Grants the table does not hold and rules equal to :data:`NONE` are left out; the result is
    canonical (equal inputs give equal tables).
    """
    index = {h: i for i, h in enumerate(table.authorized_users)}
    distinct: list[SessionRules] = []
    grants: dict[str, int] = {}
    for (user_id, local), value in sorted(rules.items()):
        position = index.get(hash_user_id(user_id))
        if position is None or value == NONE or not local:
            continue
        if value not in distinct:
            distinct.append(value)
        grants[f"{position}/{local}"] = distinct.index(value)
    if not grants:
        return table
    return msgspec.structs.replace(
        table, session_rules=tuple(distinct), session_grants=dict(sorted(grants.items()))
    )


def rules_for(table: SshAuth | None, user_id: str, local_user: str) -> SessionRules:
    """The rules of a login as ``local_user`` by ``user_id`` (:data:`NONE` when none).

    A grant whose rules index is out of range (a malformed map) counts as the strictest
    possible rules: recording required, so such a login fails closed.
    """
    if table is None or not user_id or not table.session_grants:
        return NONE
    try:
        position = table.authorized_users.index(hash_user_id(user_id))
    except ValueError:
        return NONE
    found: list[SessionRules] = []
    for local in (WILDCARD, local_user):
        at = table.session_grants.get(f"{position}/{local}")
        if at is None:
            continue
        if at >= len(table.session_rules):
            found.append(SessionRules(recording="required"))
        else:
            found.append(table.session_rules[at])
    return strictest(found)


def login_age_refusal(
    rules: SessionRules, claims: Mapping[str, object], *, now: float, skew: float = 0
) -> str:
    """Why a token is too old a login for ``rules.check_period`` ("" when it is not).

    The login time is the token's ``auth_time`` (when the user last signed in), else ``iat``;
    a token with neither is refused when a check period applies.
    """
    if rules.check_period <= 0:
        return ""
    login = claims.get("auth_time", claims.get("iat"))
    if not isinstance(login, int | float) or isinstance(login, bool):
        return "the token says nothing of when you signed in"
    age = now - float(login)
    if age > rules.check_period + skew:
        wanted = rules.check_period
        return f"you signed in {int(age)} s ago; this peer wants a login at most {wanted} s old"
    return ""
