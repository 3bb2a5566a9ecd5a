"""A small owner for background tasks: every task is named, tracked, and cancelled on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("agentdispatch.tasks")


class TaskSet:
    """Owns tasks started in the background; logs their failures instead of losing them."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None) -> asyncio.Task[Any]:
        """Run `coro`; `name` None leaves the task unnamed (asyncio's "Task-N", made only when asked):
        one task per connection of a large fleet does not keep a name string each."""
        task_name = None if name is None else f"{self._owner}:{name}"
        task = asyncio.get_running_loop().create_task(coro, name=task_name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            name = task.get_name()
            if not name.startswith(self._owner):  # spawned unnamed: say whose it was
                name = self._owner
            log.error("task %s failed", name, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
