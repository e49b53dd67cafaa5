"""Refusals with a bounded label: what metrics and audit count, next to what the user sees.

Example::

    raise Refused("not_authorized", "u-1 may not log in as bob",
                  public="Permission denied: ...")
    label_of(err)   # "not_authorized"
"""

from __future__ import annotations

from meshssh_common.errors import Denied
from meshssh_common.jwt_validation import TokenRejected

__all__ = ["Refused", "label_of"]


class Refused(Denied):
    """A refusal whose ``label`` is a bounded metric value; ``public`` is shown to the user."""

    def __init__(self, label: str, detail: str, *, public: str, user_id: str = "") -> None:
        super().__init__(f"{label}: {detail}", public=public)
        self.label = label
        self.user_id = user_id  # the validated token's user, when the refusal came after it


def label_of(error: Exception) -> str:
    """The bounded label of a refusal (``error`` for anything unexpected)."""
    if isinstance(error, Refused):
        return error.label
    if isinstance(error, TokenRejected):
        return error.reason.value
    if isinstance(error, Denied):
        return "denied"
    return "error"
