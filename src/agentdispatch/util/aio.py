"""`wait_for` that never loses a cancellation.

CPython 3.11's `asyncio.wait_for` returns the inner result when the waiting task is cancelled in the
same loop iteration in which the inner awaitable finishes: the `cancel()` is swallowed. A loop such as
`while True: await asyncio.wait_for(event.wait(), interval)` then survives `task.cancel()`, and whoever
awaits the cancelled task waits forever (seen as a benchmark client whose probe never stopped, and as
status loops that outlived their worker's shutdown). `asyncio.timeout` keeps the cancellation, so every
timed wait in the package goes through here; ruff bans `asyncio.wait_for` outside this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await `awaitable` for at most `timeout` seconds (None: no limit); TimeoutError when it runs out.

    Like `asyncio.wait_for`, the awaitable is cancelled on timeout. Unlike it, a cancellation of the
    calling task is always raised, even when the awaitable finished in the same iteration.
    """
    async with asyncio.timeout(timeout):
        return await awaitable
