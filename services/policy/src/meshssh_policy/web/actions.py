"""The dashboard's writes (POST), through the same service operations as the REST API.

Each is an admin's, carries the session's CSRF token, calls the same service operation as
its REST route, and is audited with the REST route's action (``PATCH
/api/v1/peers/{peer_id}``) and the user as actor (``user:<id>``).

A refused operation is audited with its status too, then shown on the page it came from.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from meshssh_common.errors import MeshError
from meshssh_policy.api_models import GroupIn, PeerPatch, PolicyPatch, SetupKeyIn, SetupKeyPatch
from meshssh_policy.http_errors import http_status
from meshssh_policy.management import Management
from meshssh_policy.peers import setup_key_view
from meshssh_policy.validation import validation_message
from meshssh_policy.web.auth import WebAuth, actor_of
from meshssh_policy.web.pages import Pages
from meshssh_policy.web.policy_form import PolicyForm
from meshssh_policy.web.sessions import Session

__all__ = ["Actions"]

T = TypeVar("T")


def _back(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


class Actions:
    """The POST routes."""

    def __init__(self, mgmt: Management, auth: WebAuth, pages: Pages) -> None:
        self.mgmt = mgmt
        self.auth = auth
        self.pages = pages

    async def audited(
        self,
        session: Session,
        action: str,
        op: Callable[[], Awaitable[T]],
        *,
        targets: tuple[str, ...] = (),
        peer_id: str = "",
        detail: Any = None,
    ) -> T:
        """Run ``op`` and record it as ``action`` (a refusal with its status, then re-raised)."""
        audit = self.mgmt.audit
        try:
            result = await op()
        except MeshError as e:
            await audit.record(
                actor=actor_of(session),
                action=action,
                targets=targets,
                peer_id=peer_id,
                detail=detail,
                result=str(http_status(e)),
            )
            raise
        await audit.record(
            actor=actor_of(session),
            action=action,
            targets=targets,
            peer_id=peer_id,
            detail=detail,
            result="200",
        )
        return result

    def router(self) -> APIRouter:
        """The write routes."""
        router = APIRouter(include_in_schema=False)
        mgmt, auth, pages = self.mgmt, self.auth, self.pages

        @router.post("/peers/{peer_id}/ssh")
        async def switch_ssh(request: Request, peer_id: str) -> Response:
            session = await auth.writer(request)
            on = str((await request.form()).get("on", "")) == "1"
            await self.audited(
                session,
                "PATCH /api/v1/peers/{peer_id}",
                lambda: mgmt.peer_ops.update(peer_id, PeerPatch(ssh_enabled=on)),
                targets=(peer_id,),
                peer_id=peer_id,
                detail={"ssh_enabled": on},
            )
            return _back("/peers")

        @router.post("/peers/{peer_id}/sessions/{session_id}/end")
        async def end_session(request: Request, peer_id: str, session_id: str) -> Response:
            session = await auth.writer(request)
            await self.audited(
                session,
                "DELETE /api/v1/peers/{peer_id}/sessions/{session_id}",
                lambda: mgmt.end_session(peer_id, session_id),
                targets=(peer_id, session_id),
                peer_id=peer_id,
            )
            return _back(f"/peers/{peer_id}")

        @router.post("/groups")
        async def create_group(request: Request) -> Response:
            session = await auth.writer(request)
            form = await request.form()
            fields = {
                "id": str(form.get("id", "")).strip(),
                "name": str(form.get("name", "")).strip(),
            }
            try:
                body = GroupIn.model_validate(fields)
            except ValidationError as e:
                return pages.groups_page(
                    request,
                    session,
                    validation_message(
                        [
                            {"loc": list(x.get("loc", ())), "msg": x.get("msg", "")}
                            for x in e.errors()
                        ]
                    ),
                    422,
                )
            try:
                await self.audited(
                    session,
                    "POST /api/v1/groups",
                    lambda: mgmt.resources.create_group(body),
                    detail=fields,
                )
            except MeshError as e:
                return pages.groups_page(request, session, e.public, 422)
            return _back("/groups")

        async def member(request: Request, group_id: str, add: bool) -> Response:
            session = await auth.writer(request)
            form = await request.form()
            kind = str(form.get("kind", ""))
            value = str(form.get("member", ""))[:255]
            if kind not in ("user", "peer") or not value:
                return pages.groups_page(request, session, "choose a user or a peer", 422)
            method = "PUT" if add else "DELETE"
            action = f"{method} /api/v1/groups/{{group_id}}/{kind}s/{{{kind}_id}}"
            op = mgmt.add_to_group if add else mgmt.remove_from_group
            who = {kind: value}
            try:
                await self.audited(
                    session,
                    action,
                    lambda: op(group_id, **who),
                    targets=(group_id, value),
                    peer_id=value if kind == "peer" else "",
                )
            except MeshError as e:
                return pages.groups_page(request, session, e.public, 422)
            return _back("/groups")

        @router.post("/groups/{group_id}/members/add")
        async def add_member(request: Request, group_id: str) -> Response:
            return await member(request, group_id, add=True)

        @router.post("/groups/{group_id}/members/remove")
        async def remove_member(request: Request, group_id: str) -> Response:
            return await member(request, group_id, add=False)

        async def save_policy(request: Request, policy_id: str) -> Response:
            session = await auth.writer(request)
            form = PolicyForm.from_fields(await request.form())
            body, errors = form.parse()
            if body is None:
                return pages.policy_form_page(
                    request, session, form, policy_id=policy_id, errors=errors, status=422
                )
            detail = body.model_dump(exclude_none=True)
            try:
                if policy_id:
                    await self.audited(
                        session,
                        "PUT /api/v1/policies/{policy_id}",
                        lambda: mgmt.resources.replace_policy(policy_id, body),
                        targets=(policy_id,),
                        detail=detail,
                    )
                else:
                    await self.audited(
                        session,
                        "POST /api/v1/policies",
                        lambda: mgmt.resources.create_policy(body),
                        detail=detail,
                    )
            except MeshError as e:
                errors = {form.error_field(e.public): e.public}
                return pages.policy_form_page(
                    request, session, form, policy_id=policy_id, errors=errors, status=422
                )
            return _back("/policies")

        @router.post("/policies")
        async def create_policy(request: Request) -> Response:
            return await save_policy(request, "")

        @router.post("/policies/{policy_id}")
        async def replace_policy(request: Request, policy_id: str) -> Response:
            await auth.writer(request)
            if policy_id not in mgmt.state.policies:
                raise HTTPException(404, f"policy {policy_id[:80]!r} does not exist")
            return await save_policy(request, policy_id)

        @router.post("/policies/{policy_id}/enabled")
        async def enable_policy(request: Request, policy_id: str) -> Response:
            session = await auth.writer(request)
            on = str((await request.form()).get("on", "")) == "1"
            await self.audited(
                session,
                "PATCH /api/v1/policies/{policy_id}",
                lambda: mgmt.resources.update_policy(policy_id, PolicyPatch(enabled=on)),
                targets=(policy_id,),
                detail={"enabled": on},
            )
            return _back("/policies")

        @router.post("/setup-keys")
        async def create_key(request: Request) -> Response:
            session = await auth.writer(request)
            form = await request.form()
            try:
                days = int(str(form.get("expires_days", "30")) or 0)
                limit = int(str(form.get("usage_limit", "0")) or 0)
                body = SetupKeyIn(
                    name=str(form.get("name", "")).strip(),
                    type=str(form.get("type", "")),
                    expires_in=days * 86400,
                    usage_limit=limit,
                    auto_groups=[str(g) for g in form.getlist("auto_groups")],
                    ssh_enabled=bool(form.get("ssh_enabled")),
                    kind="gateway" if form.get("gateway") else "peer",
                )
            except ValueError as e:
                errors = e.errors() if isinstance(e, ValidationError) else [{"msg": str(e)}]
                return pages.keys_page(
                    request,
                    session,
                    status=422,
                    error=validation_message(
                        [{"loc": list(x.get("loc", ())), "msg": x.get("msg", "")} for x in errors]
                    ),
                )
            try:
                record, secret = await self.audited(
                    session,
                    "POST /api/v1/setup-keys",
                    lambda: mgmt.resources.create_setup_key(body),
                    detail=body.model_dump(exclude={"key"}),
                )
            except MeshError as e:
                return pages.keys_page(request, session, error=e.public, status=422)
            created = {**setup_key_view(record, time.time()), "key": secret}
            return pages.keys_page(request, session, created=created)

        @router.post("/setup-keys/{key_id}/revoke")
        async def revoke_key(request: Request, key_id: str) -> Response:
            session = await auth.writer(request)
            await self.audited(
                session,
                "PATCH /api/v1/setup-keys/{key_id}",
                lambda: mgmt.resources.update_setup_key(key_id, SetupKeyPatch(revoked=True)),
                targets=(key_id,),
                detail={"revoked": True},
            )
            return _back("/setup-keys")

        return router
