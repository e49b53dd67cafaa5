"""What each ``meshctl`` command does: one REST call (or a few), then a table or JSON.

Every handler takes the parsed arguments and an :class:`AdminApi` and returns what to print:
a string for people, or the API's JSON when ``--json`` is given (the caller decides).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from meshssh_cli.meshctl.api import AdminApi, AdminError
from meshssh_cli.meshctl.tables import (
    group_rows,
    peer_detail,
    peer_rows,
    policy_rows,
    setup_key_rows,
    table,
    user_rows,
    when,
)

__all__ = [
    "Result",
    "bus_ls",
    "bus_revoke",
    "groups_create",
    "groups_ls",
    "groups_members",
    "groups_rm",
    "groups_show",
    "keys_create",
    "keys_ls",
    "keys_revoke",
    "keys_rm",
    "parse_duration",
    "parse_port_range",
    "peers_end_session",
    "peers_ls",
    "peers_netmap",
    "peers_rm",
    "peers_show",
    "peers_ssh",
    "policies_create",
    "policies_ls",
    "policies_rm",
    "policies_show",
    "policies_switch",
    "status",
    "users_add",
    "users_ls",
    "users_rm",
]

Result = tuple[Any, str]
"""(the JSON for ``--json``, the text for people)"""

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600`` or ``never`` (0) → seconds.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    if text in ("never", "0"):
        return 0
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration like 30d, 12h or 90m: {text!r}")
    return int(match[1]) * _UNITS[match[2]]


def parse_port_range(text: str) -> dict[str, int]:
    """``8000-8100`` → ``{"start": 8000, "end": 8100}``.

    Raises:
        argparse.ArgumentTypeError: not ``START-END``.
    """
    start, sep, end = text.partition("-")
    if not sep or not start.isdigit() or not end.isdigit():
        raise argparse.ArgumentTypeError(f"not a port range like 8000-8100: {text!r}")
    return {"start": int(start), "end": int(end)}


def _authorized(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        group, sep, users = item.partition("=")
        if not group:
            raise AdminError(f"--authorized-group expects GROUP or GROUP=user1,user2, got {item!r}")
        out[group] = [u for u in users.split(",") if u] if sep else []
    return out


# -- peers ----------------------------------------------------------------------------------


def peers_ls(args: argparse.Namespace, api: AdminApi) -> Result:
    """``peers ls``: every peer with online and SSH state."""
    peers = api.get("/peers")
    return peers, table(*peer_rows(peers))


def peers_show(args: argparse.Namespace, api: AdminApi) -> Result:
    """``peers show PEER``: one peer by id or name, with live sessions."""
    peer = api.find_peer(args.peer)
    return peer, peer_detail(peer)


def peers_ssh(args: argparse.Namespace, api: AdminApi) -> Result:
    """``peers ssh enable|disable PEER``: set the admin SSH switch."""
    peer = api.find_peer(args.peer)
    enable = args.switch == "enable"
    updated = api.call("PATCH", f"/peers/{peer['id']}", {"ssh_enabled": enable})
    state = "enabled" if updated["ssh_active"] else "still disabled (no ssh rule; switch off)"
    return updated, f"SSH switch of {updated['name']} ({updated['id']}) is {args.switch}d; " + (
        f"SSH {state}"
    )


def peers_end_session(args: argparse.Namespace, api: AdminApi) -> Result:
    """``peers end-session PEER SESSION``: the peer's sshd closes that session's connection."""
    peer = api.find_peer(args.peer)
    api.call("DELETE", f"/peers/{peer['id']}/sessions/{args.session}")
    done = {"peer": peer["id"], "session": args.session, "ended": True}
    return done, f"ended session {args.session} on {peer['name']} ({peer['id']})"


def peers_rm(args: argparse.Namespace, api: AdminApi) -> Result:
    """``peers rm PEER``: remove a peer."""
    peer = api.find_peer(args.peer)
    api.call("DELETE", f"/peers/{peer['id']}")
    return {"removed": peer["id"]}, f"removed peer {peer['name']} ({peer['id']})"


def peers_netmap(args: argparse.Namespace, api: AdminApi) -> Result:
    """``peers netmap PEER``: the map published for a peer."""
    peer = api.find_peer(args.peer)
    netmap = api.get(f"/peers/{peer['id']}/netmap")
    return netmap, json.dumps(netmap, indent=2)


# -- users ----------------------------------------------------------------------------------


def users_ls(args: argparse.Namespace, api: AdminApi) -> Result:
    """``users ls``: every user with its groups."""
    users = api.get("/users")
    return users, table(*user_rows(users))


def users_add(args: argparse.Namespace, api: AdminApi) -> Result:
    """``users add ID``: add a user."""
    body = {"id": args.id, "email": args.email, "name": args.name, "groups": args.group}
    user = api.call("POST", "/users", body)
    return user, f"added user {user['id']}"


def users_rm(args: argparse.Namespace, api: AdminApi) -> Result:
    """``users rm ID``: remove a user."""
    api.call("DELETE", f"/users/{args.id}")
    return {"removed": args.id}, f"removed user {args.id}"


# -- groups ---------------------------------------------------------------------------------


def groups_ls(args: argparse.Namespace, api: AdminApi) -> Result:
    """``groups ls``: every group."""
    groups = api.get("/groups")
    return groups, table(*group_rows(groups))


def groups_show(args: argparse.Namespace, api: AdminApi) -> Result:
    """``groups show ID``: one group's members."""
    group = api.get(f"/groups/{args.id}")
    text = "\n".join(
        [
            f"id:     {group['id']}",
            f"name:   {group['name']}",
            f"peers:  {', '.join(group['peers']) or '-'}",
            f"users:  {', '.join(group['users']) or '-'}",
        ]
    )
    return group, text


def groups_create(args: argparse.Namespace, api: AdminApi) -> Result:
    """``groups create ID``: create a group (peers by id or name)."""
    peers = [api.find_peer(p)["id"] for p in args.peer]
    body = {"id": args.id, "name": args.name or args.id, "peers": peers, "users": args.user}
    group = api.call("POST", "/groups", body)
    return group, f"created group {group['id']}"


def groups_rm(args: argparse.Namespace, api: AdminApi) -> Result:
    """``groups rm ID``: remove a group."""
    api.call("DELETE", f"/groups/{args.id}")
    return {"removed": args.id}, f"removed group {args.id}"


def groups_members(args: argparse.Namespace, api: AdminApi) -> Result:
    """``groups add|remove ID --peer P --user U``: change members."""
    method = "PUT" if args.action == "add" else "DELETE"
    if not args.peer and not args.user:
        raise AdminError(f"groups {args.action}: name at least one --peer or --user")
    group: Any = None
    for ref in args.peer:
        peer_id = api.find_peer(ref)["id"] if args.action == "add" else ref
        if args.action == "remove" and not re.fullmatch(r"[a-z0-9-]+", ref):
            raise AdminError(f"not a peer id: {ref!r}")
        group = api.call(method, f"/groups/{args.id}/peers/{peer_id}")
    for user in args.user:
        group = api.call(method, f"/groups/{args.id}/users/{user}")
    verb = "added to" if args.action == "add" else "removed from"
    return group, f"{verb} group {args.id}: {len(args.peer)} peer(s), {len(args.user)} user(s)"


# -- policies -------------------------------------------------------------------------------


def policies_ls(args: argparse.Namespace, api: AdminApi) -> Result:
    """``policies ls``: every policy, one line per rule."""
    policies = api.get("/policies")
    return policies, table(*policy_rows(policies))


def policies_show(args: argparse.Namespace, api: AdminApi) -> Result:
    """``policies show ID``: one policy."""
    policy = api.get(f"/policies/{args.id}")
    return policy, table(*policy_rows([policy]))


def policies_create(args: argparse.Namespace, api: AdminApi) -> Result:
    """``policies create NAME ...`` or ``--file``: create a policy."""
    if args.file is not None:
        try:
            body = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as e:
            raise AdminError(f"cannot read policy file {args.file}: {e}") from e
    else:
        if not args.name or not args.source or not args.destination:
            raise AdminError("policies create: give NAME, --source and --destination (or --file)")
        rule: dict[str, Any] = {
            "sources": args.source,
            "destinations": args.destination,
            "protocol": args.protocol,
            "action": args.action,
            "ports": args.port,
            "port_ranges": args.port_range,
        }
        if args.authorized_group:
            rule["authorized_groups"] = _authorized(args.authorized_group)
        rule.update(_session_options(args))
        body = {
            "name": args.name,
            "description": args.description,
            "enabled": not args.disabled,
            "rules": [rule],
        }
        if args.id:
            body["id"] = args.id
    policy = api.call("POST", "/policies", body)
    return policy, f"created policy {policy['id']}\n" + table(*policy_rows([policy]))


def _session_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ssh`` rule's session options that were given (the API checks them)."""
    out: dict[str, Any] = {}
    if args.recording is not None:
        out["recording"] = args.recording
    for name in ("idle_timeout", "max_session", "check_period"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    for name in ("record_input", "record_exec"):
        if getattr(args, name):
            out[name] = True
    return out


def policies_rm(args: argparse.Namespace, api: AdminApi) -> Result:
    """``policies rm ID``: remove a policy."""
    api.call("DELETE", f"/policies/{args.id}")
    return {"removed": args.id}, f"removed policy {args.id}"


def policies_switch(args: argparse.Namespace, api: AdminApi) -> Result:
    """``policies enable|disable ID``."""
    enabled = args.action == "enable"
    policy = api.call("PATCH", f"/policies/{args.id}", {"enabled": enabled})
    return policy, f"policy {policy['id']} {args.action}d"


# -- setup keys -----------------------------------------------------------------------------


def keys_ls(args: argparse.Namespace, api: AdminApi) -> Result:
    """``setup-keys ls``: every setup key (never its value)."""
    keys = api.get("/setup-keys")
    return keys, table(*setup_key_rows(keys))


def keys_create(args: argparse.Namespace, api: AdminApi) -> Result:
    """``setup-keys create NAME``: create a key; its value is shown once."""
    body = {
        "name": args.name,
        "type": "one-off" if args.one_off else "reusable",
        "expires_in": args.expires_in,
        "usage_limit": args.usage_limit,
        "auto_groups": args.auto_group,
        "ssh_enabled": args.ssh_enabled,
        "kind": "gateway" if args.gateway else "peer",
    }
    key = api.call("POST", "/setup-keys", body)
    text = f"created setup key {key['id']} ({key['name']})\nkey (shown only now): {key['key']}"
    return key, text


def keys_revoke(args: argparse.Namespace, api: AdminApi) -> Result:
    """``setup-keys revoke ID``."""
    key = api.call("PATCH", f"/setup-keys/{args.id}", {"revoked": True})
    return key, f"revoked setup key {key['id']}"


def keys_rm(args: argparse.Namespace, api: AdminApi) -> Result:
    """``setup-keys rm ID``."""
    api.call("DELETE", f"/setup-keys/{args.id}")
    return {"removed": args.id}, f"removed setup key {args.id}"


# -- bus ------------------------------------------------------------------------------------


def bus_revoke(args: argparse.Namespace, api: AdminApi) -> Result:
    """``bus revoke KEY``: revoke a NATS user key (a rotated service's old key, say)."""
    done = api.call("POST", "/bus/revocations", {"public_key": args.key})
    again = "" if done["new"] else " (it was revoked already)"
    return done, f"revoked NATS key {done['public_key']}{again}"


def bus_ls(args: argparse.Namespace, api: AdminApi) -> Result:
    """``bus ls``: the revoked NATS user keys."""
    revoked = api.get("/bus/revocations")
    rows = [
        [r["public_key"], when(r["at"]), when(r["until"]) if r["until"] else "never"]
        for r in revoked
    ]
    return revoked, table(["KEY", "REVOKED", "FORGOTTEN"], rows)


def status(args: argparse.Namespace, api: AdminApi) -> Result:
    """``status``: the replica behind the API."""
    body = api.get("/status")
    text = (
        f"api:      {api.url}\ninstance: {body['instance']}\n"
        f"peers:    {body['peers']} ({body['peers_online']} online)\n"
        f"mesh:     {body['mesh_prefix']}"
    )
    return body, text
