"""One supervised set of background tasks: named, failures logged and surfaced, bounded close.

The single task set of the house (sshd's connections and sessions, the relay's accept loop and
dials, sshd's JWKS refresh batches, the RPC dispatch pool). A task that fails is never
swallowed: its traceback is logged with its name, ``failures`` counts it and ``on_failure``
(e.g. a metric) is told. A cancelled task is not a failure. :meth:`TaskSet.close` cancels
every task, including the ones spawned while closing (a cancelled session spawns its kill),
and waits for them at most ``timeout`` seconds: a task that ignores cancellation cannot hold
a shutdown forever.

Example::

    tasks = TaskSet(log, on_failure=lambda name, e: metrics.task_failures.labels(name).inc())
    tasks.spawn(handle(conn), "conn")
    ...
    stuck = await tasks.close(timeout=5.0)   # names of tasks that did not end in time
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from meshssh_common.logs import BoundLogger

__all__ = ["TaskSet"]

T = TypeVar("T")


class TaskSet:
    """Tasks owned by one component (see the module docstring)."""

    def __init__(
        self,
        log: BoundLogger,
        *,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._log = log
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failures = 0

    def spawn(self, coro: Coroutine[Any, Any, T], name: str = "task") -> asyncio.Task[T]:
        """Run ``coro`` as a task named ``name``, owned by this set."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        """Ask every task to stop, without waiting (for synchronous callbacks)."""
        for task in list(self._tasks):
            task.cancel()

    def names(self) -> list[str]:
        """The names of the tasks still running."""
        return sorted(task.get_name() for task in self._tasks)

    async def close(self, timeout: float = 5.0) -> list[str]:
        """Cancel every task and wait for all of them, at most ``timeout`` seconds in all.

        Returns:
            The names of the tasks still running after ``timeout`` (logged as an error).
        """
        deadline = time.monotonic() + timeout
        while self._tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=left)
        stuck = self.names()
        if stuck:
            self._log.error("tasks did not end when cancelled", extra={"tasks": stuck})
        return stuck

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        self.failures += 1
        self._log.error(
            "background task failed",
            extra={"task": task.get_name(), "error": repr(error)},
            exc_info=(type(error), error, error.__traceback__),
        )
        if self._on_failure is not None:
            try:
                self._on_failure(task.get_name(), error)
            except Exception:
                self._log.exception("task failure handler failed")
