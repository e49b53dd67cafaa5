"""``meshctl sessions``: recorded SSH sessions (``GET /api/v1/recordings``).

``ls`` lists them, newest first; ``export ID`` writes the asciicast v2 file to stdout (what
``asciinema play`` and the dashboard's player read); ``play ID`` replays it on this terminal,
at real speed or ``--speed N`` times faster, with pauses cut to ``--idle-limit`` seconds.

Example::

    meshctl sessions ls
    meshctl sessions export 3f2a9c01d4e5 > session.cast
    meshctl sessions play 3f2a9c01d4e5 --speed 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from meshssh_cli.meshctl.api import AdminApi, AdminError
from meshssh_cli.meshctl.tables import table, when

__all__ = ["replay", "sessions_export", "sessions_ls", "sessions_play"]

HEADERS = ["SESSION", "STARTED", "USER", "PEER", "SOURCE", "COMMAND", "SIZE"]


def sessions_ls(args: argparse.Namespace, api: AdminApi) -> tuple[Any, str]:
    """``sessions ls``: the stored recordings, newest first."""
    found = api.get("/recordings")
    rows = [
        [
            r["session"],
            when(r.get("started_at")),
            f"{r.get('user') or '-'} as {r.get('local_user') or '-'}",
            r.get("peer_name") or r["peer"],
            r.get("source") or "-",
            r.get("command") or "-",
            f"{r.get('width', 0)}x{r.get('height', 0)}",
        ]
        for r in found
    ]
    return found, table(HEADERS, rows)


def _cast(api: AdminApi, session_id: str) -> bytes:
    data = api.get_bytes(f"/recordings/{session_id}")
    if not data:
        raise AdminError(f"recording {session_id!r} is empty")
    return data


def sessions_export(args: argparse.Namespace, api: AdminApi) -> tuple[Any, str]:
    """``sessions export ID``: the asciicast v2 file, to stdout as it is stored."""
    out: BinaryIO = sys.stdout.buffer
    out.write(_cast(api, args.id))
    out.flush()
    return None, ""


def replay(
    data: bytes,
    out: BinaryIO,
    *,
    speed: float = 1.0,
    idle_limit: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write a recording's output events to ``out`` in time; returns how many were written.

    Raises:
        AdminError: ``data`` is not asciicast v2.
    """
    lines = data.decode("utf-8", "replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError as e:
        raise AdminError(f"not an asciicast recording: {e}") from e
    if not isinstance(header, dict) or header.get("version") != 2:
        raise AdminError("not an asciicast v2 recording")
    last = 0.0
    shown = 0
    for line in lines[1:]:
        try:
            at, code, text = json.loads(line)
        except ValueError as e:
            raise AdminError(f"a bad event in the recording: {e}") from e
        if code != "o":
            continue
        gap = max(0.0, float(at) - last)
        last = float(at)
        if idle_limit > 0:
            gap = min(gap, idle_limit)
        if gap > 0:
            sleep(gap / speed)
        out.write(str(text).encode("utf-8"))
        out.flush()
        shown += 1
    return shown


def sessions_play(args: argparse.Namespace, api: AdminApi) -> tuple[Any, str]:
    """``sessions play ID [--speed N] [--idle-limit S]``: replay on this terminal."""
    if args.speed <= 0:
        raise AdminError("--speed must be above 0")
    replay(_cast(api, args.id), sys.stdout.buffer, speed=args.speed, idle_limit=args.idle_limit)
    return None, ""
