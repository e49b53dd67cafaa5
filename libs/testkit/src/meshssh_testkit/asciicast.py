"""A strict asciicast v2 reader for tests: the header, the events, and what a terminal saw.

It checks what ``asciinema play`` needs: a JSON object header with ``version`` 2 and integer
``width`` and ``height``, then one JSON array per line, ``[time, code, data]``, with times
that never go back and codes ``o``, ``i``, ``r`` or ``m``.

Example::

    cast = parse_asciicast(data)
    cast.output()   # the concatenated output text
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Cast", "parse_asciicast"]


@dataclass(frozen=True)
class Cast:
    """A parsed recording."""

    header: dict[str, Any]
    events: list[tuple[float, str, str]]

    def output(self) -> str:
        """Every output event's text, joined."""
        return "".join(data for _, code, data in self.events if code == "o")

    def of(self, code: str) -> list[str]:
        """The data of every event with ``code``."""
        return [data for _, c, data in self.events if c == code]


def parse_asciicast(data: bytes) -> Cast:
    """Parse ``data`` as asciicast v2.

    Raises:
        ValueError: it is not valid asciicast v2 (the message says where).
    """
    lines = data.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError("empty recording")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ValueError(f"header: not asciicast v2: {lines[0][:200]}")
    for key in ("width", "height"):
        if not isinstance(header.get(key), int) or header[key] <= 0:
            raise ValueError(f"header: {key} must be a positive integer")
    events: list[tuple[float, str, str]] = []
    last = 0.0
    for number, line in enumerate(lines[1:], start=2):
        event = json.loads(line)
        if not (isinstance(event, list) and len(event) == 3):
            raise ValueError(f"line {number}: not [time, code, data]")
        at, code, text = event
        if not isinstance(at, int | float) or at < last:
            raise ValueError(f"line {number}: time {at!r} goes back (last {last})")
        if code not in ("o", "i", "r", "m") or not isinstance(text, str):
            raise ValueError(f"line {number}: bad code or data")
        last = float(at)
        events.append((last, code, text))
    return Cast(header, events)
