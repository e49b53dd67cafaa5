"""The HTTP status of each service error code (the REST API and the dashboard agree)."""

from __future__ import annotations

from meshssh_common.errors import MeshError

__all__ = ["http_status"]

_STATUS = {
    "bad_request": 400,
    "bad_message": 400,
    "denied": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "unavailable": 503,
}


def http_status(error: MeshError) -> int:
    """400 for a bad reference, 404 unknown id, 409 conflict, 503 dependency missing..."""
    return _STATUS.get(error.code, 500)
