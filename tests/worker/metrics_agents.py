"""Entrypoints for the worker metrics tests, run inside real job processes."""

from __future__ import annotations

import asyncio
import time

from worker_agents import record

from agentdispatch import JobContext


async def entry_burn(ctx: JobContext) -> None:
    """Burns 0.5 s of CPU, says it is running, lives one more second and ends."""
    end = time.process_time() + 0.5
    while time.process_time() < end:
        pass
    record(ctx, state="running")
    await asyncio.sleep(1.0)
