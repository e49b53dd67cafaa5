"""Adding and removing group members with compare-and-set (many writers, no lost member).

Example::

    await add_member(store, "servers", peer="3fa9c1d2e0b4")
    await remove_member(store, "users", user="alice")
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from meshssh_common.errors import NotFound
from meshssh_policy.records import GroupRecord, group_key
from meshssh_policy.store import Store

__all__ = ["add_member", "forget_member", "remove_member"]


def _with(items: tuple[str, ...], item: str | None) -> tuple[str, ...]:
    return items if item is None or item in items else (*items, item)


def _without(items: tuple[str, ...], item: str | None) -> tuple[str, ...]:
    return tuple(i for i in items if i != item)


async def _edit_members(
    store: Store,
    group_id: str,
    edit: Callable[[tuple[str, ...], str | None], tuple[str, ...]],
    peer: str | None,
    user: str | None,
) -> GroupRecord:
    def change(group: GroupRecord | None) -> GroupRecord:
        if group is None:
            raise NotFound(f"group {group_id!r} does not exist")
        return msgspec.structs.replace(
            group, peers=edit(group.peers, peer), users=edit(group.users, user)
        )

    result = await store.mutate(store.groups, group_key(group_id), change)
    assert result is not None
    return result


async def add_member(
    store: Store, group_id: str, *, peer: str | None = None, user: str | None = None
) -> GroupRecord:
    """Add a peer and/or a user to a group (idempotent).

    Raises:
        NotFound: the group does not exist.
    """
    return await _edit_members(store, group_id, _with, peer, user)


async def remove_member(
    store: Store, group_id: str, *, peer: str | None = None, user: str | None = None
) -> GroupRecord:
    """Remove a peer and/or a user from a group (idempotent).

    Raises:
        NotFound: the group does not exist.
    """
    return await _edit_members(store, group_id, _without, peer, user)


async def forget_member(store: Store, *, peer: str | None = None, user: str | None = None) -> None:
    """Remove a deleted peer or user from every group that lists it."""
    for group in list(store.state.groups.values()):
        if (peer is not None and peer in group.peers) or (user is not None and user in group.users):
            try:
                await remove_member(store, group.id, peer=peer, user=user)
            except NotFound:
                continue
