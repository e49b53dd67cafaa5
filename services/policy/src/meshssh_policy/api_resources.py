"""REST routes for users, groups, policies and setup keys (create, list, show, change, delete).

Group membership has its own idempotent routes (``PUT``/``DELETE``
``/groups/{id}/peers/{peer}`` and ``/groups/{id}/users/{user}``) so that concurrent callers
adding different members never overwrite each other.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response

from meshssh_common.errors import NotFound
from meshssh_policy.api_deps import MgmtDep
from meshssh_policy.api_models import (
    GroupIn,
    GroupPatch,
    PolicyIn,
    PolicyPatch,
    SetupKeyIn,
    SetupKeyPatch,
    UserIn,
    UserPatch,
)
from meshssh_policy.management import Management
from meshssh_policy.peers import record_view, setup_key_view

__all__ = ["router", "user_view"]

router = APIRouter(prefix="/api/v1")
_NO_CONTENT = 204


def _found(value: Any, what: str) -> Any:
    if value is None:
        raise NotFound(f"{what} does not exist")
    return value


def user_view(mgmt: Management, user_id: str) -> dict[str, Any]:
    """A user with its groups (the API's and the dashboard's view)."""
    user = _found(mgmt.state.users.get(user_id), f"user {user_id!r}")
    out = record_view(user)
    out["groups"] = sorted(g.id for g in mgmt.state.groups.values() if user_id in g.users)
    return out


# -- users ----------------------------------------------------------------------------------


@router.get("/users", tags=["users"])
async def list_users(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every user with its groups."""
    return [user_view(mgmt, uid) for uid in sorted(mgmt.state.users)]


@router.post("/users", status_code=201, tags=["users"])
async def create_user(body: UserIn, mgmt: MgmtDep) -> dict[str, Any]:
    """Create a user (``id`` = the user-id claim's value, ``sub`` by default)."""
    user = await mgmt.resources.create_user(body)
    return user_view(mgmt, user.id)


@router.get("/users/{user_id}", tags=["users"])
async def get_user(user_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """One user."""
    return user_view(mgmt, user_id)


@router.patch("/users/{user_id}", tags=["users"])
async def patch_user(user_id: str, body: UserPatch, mgmt: MgmtDep) -> dict[str, Any]:
    """Change a user's email or name."""
    await mgmt.resources.update_user(user_id, body)
    return user_view(mgmt, user_id)


@router.delete("/users/{user_id}", status_code=_NO_CONTENT, tags=["users"])
async def delete_user(user_id: str, mgmt: MgmtDep) -> Response:
    """Delete a user: every authorization it had ends."""
    await mgmt.resources.delete_user(user_id)
    return Response(status_code=_NO_CONTENT)


# -- groups ---------------------------------------------------------------------------------


@router.get("/groups", tags=["groups"])
async def list_groups(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every group with its peers and users."""
    return [record_view(mgmt.state.groups[g]) for g in sorted(mgmt.state.groups)]


@router.post("/groups", status_code=201, tags=["groups"])
async def create_group(body: GroupIn, mgmt: MgmtDep) -> dict[str, Any]:
    """Create a group (``id`` is derived from ``name`` when not given)."""
    return record_view(await mgmt.resources.create_group(body))


@router.get("/groups/{group_id}", tags=["groups"])
async def get_group(group_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """One group."""
    return record_view(_found(mgmt.state.groups.get(group_id), f"group {group_id!r}"))


@router.patch("/groups/{group_id}", tags=["groups"])
async def patch_group(group_id: str, body: GroupPatch, mgmt: MgmtDep) -> dict[str, Any]:
    """Rename a group or replace its member lists."""
    return record_view(await mgmt.resources.update_group(group_id, body))


@router.delete("/groups/{group_id}", status_code=_NO_CONTENT, tags=["groups"])
async def delete_group(group_id: str, mgmt: MgmtDep) -> Response:
    """Delete a group no policy or setup key uses."""
    await mgmt.resources.delete_group(group_id)
    return Response(status_code=_NO_CONTENT)


@router.put("/groups/{group_id}/peers/{peer_id}", tags=["groups"])
async def add_group_peer(group_id: str, peer_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """Add a peer to a group (idempotent)."""
    return record_view(await mgmt.add_to_group(group_id, peer=peer_id))


@router.delete("/groups/{group_id}/peers/{peer_id}", tags=["groups"])
async def remove_group_peer(group_id: str, peer_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """Remove a peer from a group (idempotent)."""
    return record_view(await mgmt.remove_from_group(group_id, peer=peer_id))


@router.put("/groups/{group_id}/users/{user_id}", tags=["groups"])
async def add_group_user(group_id: str, user_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """Add a user to a group (idempotent)."""
    return record_view(await mgmt.add_to_group(group_id, user=user_id))


@router.delete("/groups/{group_id}/users/{user_id}", tags=["groups"])
async def remove_group_user(group_id: str, user_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """Remove a user from a group (idempotent)."""
    return record_view(await mgmt.remove_from_group(group_id, user=user_id))


# -- policies -------------------------------------------------------------------------------


@router.get("/policies", tags=["policies"])
async def list_policies(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every policy with its rules."""
    return [record_view(mgmt.state.policies[p]) for p in sorted(mgmt.state.policies)]


@router.post("/policies", status_code=201, tags=["policies"])
async def create_policy(body: PolicyIn, mgmt: MgmtDep) -> dict[str, Any]:
    """Create a policy; its groups must exist."""
    return record_view(await mgmt.resources.create_policy(body))


@router.get("/policies/{policy_id}", tags=["policies"])
async def get_policy(policy_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """One policy."""
    return record_view(_found(mgmt.state.policies.get(policy_id), f"policy {policy_id!r}"))


@router.put("/policies/{policy_id}", tags=["policies"])
async def put_policy(policy_id: str, body: PolicyIn, mgmt: MgmtDep) -> dict[str, Any]:
    """Replace a policy."""
    return record_view(await mgmt.resources.replace_policy(policy_id, body))


@router.patch("/policies/{policy_id}", tags=["policies"])
async def patch_policy(policy_id: str, body: PolicyPatch, mgmt: MgmtDep) -> dict[str, Any]:
    """Change some fields of a policy (e.g. ``{"enabled": false}``)."""
    return record_view(await mgmt.resources.update_policy(policy_id, body))


@router.delete("/policies/{policy_id}", status_code=_NO_CONTENT, tags=["policies"])
async def delete_policy(policy_id: str, mgmt: MgmtDep) -> Response:
    """Delete a policy."""
    await mgmt.resources.delete_policy(policy_id)
    return Response(status_code=_NO_CONTENT)


# -- setup keys -----------------------------------------------------------------------------


@router.get("/setup-keys", tags=["setup-keys"])
async def list_setup_keys(mgmt: MgmtDep) -> list[dict[str, Any]]:
    """Every setup key (never its value)."""
    now = time.time()
    keys = sorted(mgmt.state.setup_keys.values(), key=lambda k: (k.name, k.id))
    return [setup_key_view(k, now) for k in keys]


@router.post("/setup-keys", status_code=201, tags=["setup-keys"])
async def create_setup_key(body: SetupKeyIn, mgmt: MgmtDep) -> dict[str, Any]:
    """Create a setup key; the response holds its value (``key``), shown only this once."""
    record, secret = await mgmt.resources.create_setup_key(body)
    out = setup_key_view(record, time.time())
    out["key"] = secret
    return out


@router.get("/setup-keys/{key_id}", tags=["setup-keys"])
async def get_setup_key(key_id: str, mgmt: MgmtDep) -> dict[str, Any]:
    """One setup key."""
    key = _found(mgmt.state.setup_keys.get(key_id), f"setup key {key_id!r}")
    return setup_key_view(key, time.time())


@router.patch("/setup-keys/{key_id}", tags=["setup-keys"])
async def patch_setup_key(key_id: str, body: SetupKeyPatch, mgmt: MgmtDep) -> dict[str, Any]:
    """Revoke a setup key (``{"revoked": true}``), rename it or change its auto-groups."""
    return setup_key_view(await mgmt.resources.update_setup_key(key_id, body), time.time())


@router.delete("/setup-keys/{key_id}", status_code=_NO_CONTENT, tags=["setup-keys"])
async def delete_setup_key(key_id: str, mgmt: MgmtDep) -> Response:
    """Delete a setup key."""
    await mgmt.resources.delete_setup_key(key_id)
    return Response(status_code=_NO_CONTENT)
