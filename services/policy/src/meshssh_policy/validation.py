"""Validation errors in one line that names the field (``rules[0].protocol: ...``, SPEC §4)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["validation_message"]


def validation_message(errors: list[Any]) -> str:
    """``rules[0].protocol: Input should be ...`` for the first validation error."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    path = ""
    for part in first.get("loc", ()):
        if part in ("body", "query", "path") and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    named = re.match(r"^([a-z_]+): (.*)$", msg, re.DOTALL)
    if named:  # a model validator naming the field inside the located object
        path = f"{path}.{named[1]}" if path else named[1]
        msg = named[2]
    return f"{path}: {msg}" if path else msg
