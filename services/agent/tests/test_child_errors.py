"""What the agent says about a failing child: the cause, not what the child logged after it.

A real child process (a shell script) logs the error that makes it exit, then, as a service
does while it shuts down, another error line (uvicorn giving up on a connection). ``status``
and ``meshssh up``'s warning must name the first one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshssh_agent.supervisor import Child
from meshssh_common.logs import service_logger

CAUSE = "2026-01-01T00:00:00Z error   relay: --listen 127.0.0.2:22: address in use"
AFTERMATH = (
    "2026-01-01T00:00:00Z error   uvicorn.error: Cancel 0 running task(s), "
    "timeout graceful shutdown exceeded"
)


async def test_last_error_is_the_first_error_of_the_latest_failing_run(tmp_path: Path) -> None:
    child_script = tmp_path / "failing-child"
    child_script.write_text(
        f"#!/bin/sh\necho 'starting' >&2\necho '{CAUSE}' >&2\necho '{AFTERMATH}' >&2\nexit 2\n"
    )
    child_script.chmod(0o755)
    child = Child("relay", lambda: [str(child_script)], log=service_logger("test-agent"))
    task = asyncio.create_task(child.run())
    try:
        child.want(True)
        async with asyncio.timeout(15):
            while child.restarts < 2:  # two failed runs: the cause stays the first line of each
                await asyncio.sleep(0.02)
        assert child.last_exit == 2
        assert child.last_error == CAUSE
        assert AFTERMATH in child.tail  # the whole tail is still kept
    finally:
        await child.shutdown()
        await task


async def test_a_child_that_cannot_be_started_says_so(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-binary")
    child = Child("sshd", lambda: [missing], log=service_logger("test-agent"))
    task = asyncio.create_task(child.run())
    try:
        child.want(True)
        async with asyncio.timeout(15):
            while not child.restarts:
                await asyncio.sleep(0.02)
        assert child.last_error.startswith(f"cannot start {missing}: error ")
    finally:
        await child.shutdown()
        await task
