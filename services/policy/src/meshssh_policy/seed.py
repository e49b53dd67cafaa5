"""``--seed FILE``: create setup keys, users, groups and policies if they are absent.

The file is JSON with four optional lists, applied in this order (later ones refer to
earlier ones) and idempotent: an existing record (same id, or same setup-key value) is left
as it is, so restarting with the same file changes nothing and an admin's later edits stay::

    {"users": [{"id": "alice", "email": "alice@example.com"}],
     "groups": [{"id": "servers"}, {"id": "users", "users": ["alice"]}],
     "setup_keys": [{"key": "demo-setup-key-0123456789", "name": "demo",
                     "auto_groups": ["servers"], "expires_in": 0}],
     "policies": [{"id": "users-to-servers", "name": "users reach servers on SSH",
                   "rules": [{"sources": ["users"], "destinations": ["servers"],
                              "protocol": "tcp", "ports": ["22"]}]}]}

A user's ``groups`` are joined after the groups exist. Each entry has the shape of the
matching REST body (``UserIn``, ``GroupIn``, ``SetupKeyIn`` with ``key``, ``PolicyIn`` with
``id``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic

from meshssh_common.errors import ConfigError, Conflict
from meshssh_common.logs import BoundLogger
from meshssh_policy.api_models import Body, GroupIn, PolicyIn, SetupKeyIn, UserIn
from meshssh_policy.memberships import add_member
from meshssh_policy.records import setup_key_id
from meshssh_policy.resources import Resources

__all__ = ["Seed", "apply_seed", "load_seed"]


class Seed(Body):
    """The seed file."""

    users: list[UserIn] = pydantic.Field(default_factory=list)
    groups: list[GroupIn] = pydantic.Field(default_factory=list)
    setup_keys: list[SetupKeyIn] = pydantic.Field(default_factory=list)
    policies: list[PolicyIn] = pydantic.Field(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _ids_fixed(self) -> Seed:
        for i, g in enumerate(self.groups):
            if g.id is None:
                raise ValueError(f"groups[{i}].id: required in a seed (it must be stable)")
        for i, p in enumerate(self.policies):
            if p.id is None:
                raise ValueError(f"policies[{i}].id: required in a seed (it must be stable)")
        for i, k in enumerate(self.setup_keys):
            if k.key is None:
                raise ValueError(f"setup_keys[{i}].key: required in a seed (it must be stable)")
        return self


def load_seed(path: Path) -> Seed:
    """Read and validate a seed file.

    Raises:
        ConfigError: unreadable, not JSON, or not a valid seed (the message names the field).
    """
    try:
        raw: Any = json.loads(path.read_text())
        return Seed.model_validate(raw)
    except OSError as e:
        raise ConfigError("--seed", f"cannot read {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ConfigError("--seed", f"{path} is not JSON: {e}") from e
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError("--seed", f"{path}: {loc}: {err['msg']}") from e


async def apply_seed(seed: Seed, resources: Resources, log: BoundLogger) -> int:
    """Create what the seed lists and the state lacks; returns how many records it created."""
    state = resources.state
    created = 0
    joining = []
    for user in seed.users:
        if user.id not in state.users:
            created += await _create(resources.create_user(user.model_copy(update={"groups": []})))
            joining.append(user)
    for group in seed.groups:
        if group.id not in state.groups:
            created += await _create(resources.create_group(group))
    for user in joining:  # only users created now: an admin's later changes stay
        for gid in user.groups:
            await add_member(resources.store, gid, user=user.id)
    for key in seed.setup_keys:
        assert key.key is not None
        if setup_key_id(key.key) not in state.setup_keys:
            created += await _create(resources.create_setup_key(key))
    for policy in seed.policies:
        if policy.id not in state.policies:
            created += await _create(resources.create_policy(policy))
    log.info("seed applied", extra={"records_created": created})
    return created


async def _create(call: Any) -> int:
    try:
        await call
    except Conflict:
        return 0  # another replica seeded it first
    return 1
