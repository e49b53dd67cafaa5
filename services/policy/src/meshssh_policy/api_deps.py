"""FastAPI dependencies shared by the API modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from meshssh_policy.management import Management

__all__ = ["MgmtDep", "get_mgmt"]


def get_mgmt(request: Request) -> Management:
    """The replica's :class:`Management` (kept on ``app.state``)."""
    mgmt: Management = request.app.state.mgmt
    return mgmt


MgmtDep = Annotated[Management, Depends(get_mgmt)]
