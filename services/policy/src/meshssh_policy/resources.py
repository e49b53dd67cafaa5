"""Admin operations on users, groups, policies and setup keys (the REST API's write side).

Each operation validates references against the current state (a rule naming an unknown
group is refused with the field named), then writes with compare-and-set through
:meth:`Store.mutate`. Errors are :class:`MeshError` subclasses; the API maps them to 4xx.

Example::

    policy = await resources.create_policy(PolicyIn(name="ssh", rules=[...]))
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable

import msgspec

from meshssh_common.errors import BadRequest, Conflict, NotFound
from meshssh_common.wire import PortRange
from meshssh_policy.api_models import (
    GroupIn,
    GroupPatch,
    PolicyIn,
    PolicyPatch,
    RuleIn,
    SetupKeyIn,
    SetupKeyPatch,
    UserIn,
    UserPatch,
)
from meshssh_policy.memberships import add_member, forget_member
from meshssh_policy.records import (
    GroupRecord,
    PolicyRecord,
    RuleRecord,
    SetupKeyRecord,
    UserRecord,
    group_key,
    policy_key,
    secret_hash,
    setup_key_id,
    setup_key_key,
    user_key,
)
from meshssh_policy.store import Store

__all__ = ["Resources", "new_id"]


def new_id(name: str) -> str:
    """An id derived from ``name`` plus a random suffix (``Web servers`` → ``web-servers-1a2b``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50].strip("-")
    suffix = secrets.token_hex(2)
    return f"{slug}-{suffix}" if slug else secrets.token_hex(6)


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _exists_or_conflict(current: object | None, what: str) -> None:
    if current is not None:
        raise Conflict(f"{what} already exists")


class Resources:
    """Users, groups, policies and setup keys over one :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.state = store.state

    # -- references ----------------------------------------------------------------------

    def _groups_exist(self, field: str, ids: Iterable[str]) -> None:
        for gid in ids:
            if gid not in self.state.groups:
                raise BadRequest(f"{field}: unknown group {gid!r}")

    def _rule(self, position: int, rule: RuleIn) -> RuleRecord:
        at = f"rules[{position}]"
        self._groups_exist(f"{at}.sources", rule.sources)
        self._groups_exist(f"{at}.destinations", rule.destinations)
        self._groups_exist(f"{at}.authorized_groups", rule.authorized_groups)
        return RuleRecord(
            sources=_dedupe(rule.sources),
            destinations=_dedupe(rule.destinations),
            protocol=rule.protocol,
            ports=_dedupe(str(int(p)) for p in rule.ports),
            port_ranges=tuple(PortRange(start=r.start, end=r.end) for r in rule.port_ranges),
            action=rule.action,
            authorized_groups={g: _dedupe(users) for g, users in rule.authorized_groups.items()},
            recording=rule.recording,
            idle_timeout=rule.idle_timeout,
            max_session=rule.max_session,
            check_period=rule.check_period,
            record_input=rule.record_input,
            record_exec=rule.record_exec,
        )

    # -- users ---------------------------------------------------------------------------

    async def create_user(self, body: UserIn) -> UserRecord:
        """Create a user, optionally adding it to groups.

        Raises:
            Conflict: the id is taken. BadRequest: an unknown group.
        """
        self._groups_exist("groups", body.groups)
        record = UserRecord(id=body.id, email=body.email, name=body.name, created_at=time.time())

        def change(current: UserRecord | None) -> UserRecord:
            _exists_or_conflict(current, f"user {body.id!r}")
            return record

        await self.store.mutate(self.store.users, user_key(body.id), change)
        for gid in body.groups:
            await add_member(self.store, gid, user=body.id)
        return record

    async def update_user(self, user_id: str, patch: UserPatch) -> UserRecord:
        """Change a user's email or name."""
        fields = patch.model_dump(exclude_none=True)

        def change(current: UserRecord | None) -> UserRecord:
            if current is None:
                raise NotFound(f"user {user_id!r} does not exist")
            return msgspec.structs.replace(current, **fields)

        result = await self.store.mutate(self.store.users, user_key(user_id), change)
        assert result is not None
        return result

    async def delete_user(self, user_id: str) -> None:
        """Delete a user and drop it from every group (its access ends)."""
        await self._delete(self.store.users, user_key(user_id), f"user {user_id!r}")
        await forget_member(self.store, user=user_id)

    # -- groups --------------------------------------------------------------------------

    def _members(self, peers: Iterable[str], users: Iterable[str]) -> None:
        for peer in peers:
            if peer not in self.state.peers:
                raise BadRequest(f"peers: unknown peer {peer!r}")
        for user in users:
            if user not in self.state.users:
                raise BadRequest(f"users: unknown user {user!r}")

    async def create_group(self, body: GroupIn) -> GroupRecord:
        """Create a group.

        Raises:
            Conflict: the id is taken. BadRequest: an unknown peer or user.
        """
        self._members(body.peers, body.users)
        gid = body.id or new_id(body.name)
        record = GroupRecord(
            id=gid, name=body.name or gid, peers=_dedupe(body.peers), users=_dedupe(body.users)
        )

        def change(current: GroupRecord | None) -> GroupRecord:
            _exists_or_conflict(current, f"group {gid!r}")
            return record

        await self.store.mutate(self.store.groups, group_key(gid), change)
        return record

    async def update_group(self, group_id: str, patch: GroupPatch) -> GroupRecord:
        """Change a group's name or replace its member lists."""
        self._members(patch.peers or (), patch.users or ())

        def change(current: GroupRecord | None) -> GroupRecord:
            if current is None:
                raise NotFound(f"group {group_id!r} does not exist")
            return msgspec.structs.replace(
                current,
                name=current.name if patch.name is None else patch.name,
                peers=current.peers if patch.peers is None else _dedupe(patch.peers),
                users=current.users if patch.users is None else _dedupe(patch.users),
            )

        result = await self.store.mutate(self.store.groups, group_key(group_id), change)
        assert result is not None
        return result

    async def delete_group(self, group_id: str) -> None:
        """Delete a group that no policy or setup key names.

        Raises:
            Conflict: still referenced (the message says by what).
        """
        for policy in self.state.policies.values():
            for rule in policy.rules:
                if group_id in (*rule.sources, *rule.destinations, *rule.authorized_groups):
                    raise Conflict(f"group {group_id!r} is used by policy {policy.id!r}")
        for key in self.state.setup_keys.values():
            if group_id in key.auto_groups:
                raise Conflict(f"group {group_id!r} is an auto-group of setup key {key.id!r}")
        await self._delete(self.store.groups, group_key(group_id), f"group {group_id!r}")

    # -- policies ------------------------------------------------------------------------

    async def create_policy(self, body: PolicyIn) -> PolicyRecord:
        """Create a policy (its groups must exist)."""
        rules = tuple(self._rule(i, r) for i, r in enumerate(body.rules))
        pid = body.id or new_id(body.name)
        record = PolicyRecord(
            id=pid,
            name=body.name,
            description=body.description,
            enabled=body.enabled,
            rules=rules,
        )

        def change(current: PolicyRecord | None) -> PolicyRecord:
            _exists_or_conflict(current, f"policy {pid!r}")
            return record

        await self.store.mutate(self.store.policies, policy_key(pid), change)
        return record

    async def replace_policy(self, policy_id: str, body: PolicyIn) -> PolicyRecord:
        """Replace a policy's name, description, switch and rules."""
        if body.id is not None and body.id != policy_id:
            raise BadRequest(f"id: {body.id!r} does not match the path's {policy_id!r}")
        return await self.update_policy(policy_id, PolicyPatch(**body.model_dump(exclude={"id"})))

    async def update_policy(self, policy_id: str, patch: PolicyPatch) -> PolicyRecord:
        """Change some fields of a policy."""
        rules = None
        if patch.rules is not None:
            rules = tuple(self._rule(i, r) for i, r in enumerate(patch.rules))
        fields = patch.model_dump(exclude_none=True, exclude={"rules"})

        def change(current: PolicyRecord | None) -> PolicyRecord:
            if current is None:
                raise NotFound(f"policy {policy_id!r} does not exist")
            updated = msgspec.structs.replace(current, **fields)
            return updated if rules is None else msgspec.structs.replace(updated, rules=rules)

        result = await self.store.mutate(self.store.policies, policy_key(policy_id), change)
        assert result is not None
        return result

    async def delete_policy(self, policy_id: str) -> None:
        """Delete a policy (the access it granted ends)."""
        await self._delete(self.store.policies, policy_key(policy_id), f"policy {policy_id!r}")

    # -- setup keys ----------------------------------------------------------------------

    async def create_setup_key(self, body: SetupKeyIn) -> tuple[SetupKeyRecord, str]:
        """Create a setup key; returns it with its value (shown only now).

        Raises:
            Conflict: a key with this value exists. BadRequest: an unknown auto-group.
        """
        self._groups_exist("auto_groups", body.auto_groups)
        secret = body.key or "mssh-" + secrets.token_urlsafe(24)
        now = time.time()
        record = SetupKeyRecord(
            id=setup_key_id(secret),
            name=body.name,
            key_hash=secret_hash(secret),
            type=body.type,
            kind=body.kind,
            expires_at=now + body.expires_in if body.expires_in else 0.0,
            usage_limit=1 if body.type == "one-off" else body.usage_limit,
            auto_groups=_dedupe(body.auto_groups),
            ssh_enabled=body.ssh_enabled,
            created_at=now,
        )

        def change(current: SetupKeyRecord | None) -> SetupKeyRecord:
            _exists_or_conflict(current, f"setup key {record.id!r}")
            return record

        await self.store.mutate(self.store.setup_keys, setup_key_key(record.id), change)
        return record, secret

    async def update_setup_key(self, key_id: str, patch: SetupKeyPatch) -> SetupKeyRecord:
        """Revoke a key, rename it or change its auto-groups."""
        if patch.auto_groups is not None:
            self._groups_exist("auto_groups", patch.auto_groups)
        fields = patch.model_dump(exclude_none=True)
        if "auto_groups" in fields:
            fields["auto_groups"] = _dedupe(fields["auto_groups"])

        def change(current: SetupKeyRecord | None) -> SetupKeyRecord:
            if current is None:
                raise NotFound(f"setup key {key_id!r} does not exist")
            return msgspec.structs.replace(current, **fields)

        result = await self.store.mutate(self.store.setup_keys, setup_key_key(key_id), change)
        assert result is not None
        return result

    async def delete_setup_key(self, key_id: str) -> None:
        """Delete a setup key (peers registered with it stay)."""
        await self._delete(self.store.setup_keys, setup_key_key(key_id), f"setup key {key_id!r}")

    async def _delete(self, kv: object, key: str, what: str) -> None:
        def change(current: object | None) -> None:
            if current is None:
                raise NotFound(f"{what} does not exist")

        await self.store.mutate(kv, key, change)  # type: ignore[arg-type]
