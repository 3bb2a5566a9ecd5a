"""`util.aio.wait_for`: a cancellation that coincides with the awaited result is never lost.

The first test shows the stdlib hazard on this interpreter (why the helper exists); the others pin the
helper: cancellation kept, results and timeouts as `asyncio.wait_for` gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from agentdispatch.util.aio import wait_for


async def _cancel_as_result_arrives(waiter: object) -> str:
    """A looping task waits on a future; the future resolves and the task is cancelled in one iteration."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()

    async def body() -> str:
        while True:
            await waiter(fut, 5)  # type: ignore[operator]
            return "cancellation lost: the loop went on"

    task = loop.create_task(body())
    await asyncio.sleep(0)
    fut.set_result(1)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rewrote asyncio.wait_for on asyncio.timeout")
async def test_stdlib_wait_for_loses_this_cancellation_on_3_11() -> None:
    assert await _cancel_as_result_arrives(asyncio.wait_for) == "cancellation lost: the loop went on"


async def test_helper_keeps_the_cancellation() -> None:
    assert await _cancel_as_result_arrives(wait_for) == "cancelled"


async def test_status_loop_pattern_stops_on_cancel_while_its_event_is_set() -> None:
    """The worker/SimWorker status-loop shape: set the event and cancel at once; the loop must end."""
    dirty = asyncio.Event()
    rounds = 0

    async def status_loop() -> None:
        nonlocal rounds
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_for(dirty.wait(), 0.5)
            dirty.clear()
            rounds += 1

    task = asyncio.get_running_loop().create_task(status_loop())
    await asyncio.sleep(0)
    for _ in range(50):
        dirty.set()
        task.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 5)
    assert task.cancelled() and rounds <= 1


async def test_result_timeout_and_no_limit() -> None:
    assert await wait_for(asyncio.sleep(0, "done"), 1) == "done"
    assert await wait_for(asyncio.sleep(0, "unbounded"), None) == "unbounded"
    slow = asyncio.get_running_loop().create_task(asyncio.sleep(30))
    with pytest.raises(TimeoutError):
        await wait_for(slow, 0.01)
    await asyncio.sleep(0)
    assert slow.cancelled(), "the awaited task is cancelled on timeout, as with asyncio.wait_for"
