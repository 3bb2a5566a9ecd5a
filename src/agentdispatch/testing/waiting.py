"""Waiting for a condition in a test without sleep-and-hope: poll until true, or fail naming the wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "", interval: float = 0.02
) -> Any:
    """Call `predicate` every `interval` s until it returns something truthy, and return that.

    After `timeout` s an AssertionError names `what` (or the predicate), so the failing test says what it
    was waiting for. Prefer an event where the code under test offers one; this is for state that has none.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


async def eventually(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 30.0,
    what: str = "",
    retry_on: tuple[type[BaseException], ...] = (),
    interval: float = 0.05,
) -> Any:
    """Await `check()` every `interval` s until it returns something truthy, and return that.

    Exceptions of the `retry_on` types count as "not yet" (a server that is restarting, a refused
    connection); after `timeout` s an AssertionError names `what` and the last value or exception.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last: object = None
    while True:
        try:
            value = await check()
            if value:
                return value
            last = value
        except retry_on as exc:
            last = exc
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check} (last: {last!r})")
        await asyncio.sleep(interval)
