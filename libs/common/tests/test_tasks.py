"""The supervised task set: failures logged and surfaced, cancellation, a bounded close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshssh_common.logs import service_logger
from meshssh_common.tasks import TaskSet


async def test_a_failing_task_is_logged_counted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported: list[tuple[str, str]] = []
    tasks = TaskSet(service_logger("test"), on_failure=lambda n, e: reported.append((n, str(e))))

    async def fail() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        task = tasks.spawn(fail(), "worker")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert reported == [("worker", "boom")]
    assert tasks.failures == 1
    assert len(tasks) == 0
    failed = [r for r in caplog.records if r.getMessage() == "background task failed"]
    assert len(failed) == 1
    assert failed[0].exc_info is not None


async def test_close_cancels_every_task_and_those_spawned_while_closing() -> None:
    tasks = TaskSet(service_logger("test"))
    ended: list[str] = []

    async def last_words() -> None:
        ended.append("kill")

    async def session() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            tasks.spawn(last_words(), "kill")  # as a session spawns its child's kill
            raise

    tasks.spawn(session(), "session")
    tasks.spawn(asyncio.sleep(3600), "sleeper")
    await asyncio.sleep(0)
    assert tasks.names() == ["session", "sleeper"]
    assert await tasks.close(timeout=5) == []
    assert ended == ["kill"]
    assert tasks.failures == 0  # cancelled is not failed


async def test_close_gives_up_on_a_task_that_ignores_cancellation() -> None:
    tasks = TaskSet(service_logger("test"))
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallowed, as nats-py's flush path does

    tasks.spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)
    assert await tasks.close(timeout=0.2) == ["stubborn"]
    release.set()
    await asyncio.sleep(0.05)
    assert len(tasks) == 0


async def test_cancel_asks_every_task_to_stop_without_waiting() -> None:
    tasks = TaskSet(service_logger("test"))
    sleeper = tasks.spawn(asyncio.sleep(3600), "sleeper")
    await asyncio.sleep(0)
    tasks.cancel()
    assert not sleeper.done()  # asked, not awaited
    await asyncio.gather(sleeper, return_exceptions=True)
    assert sleeper.cancelled()
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert len(tasks) == 0
