"""The demo's agent: each job "talks" for 1-3 s in its own process, then ends with success."""

from __future__ import annotations

import asyncio
import zlib

from ..worker.child.context import JobContext


async def entrypoint(ctx: JobContext) -> None:
    # a stable pseudo-random duration per job, so reruns of the same job behave alike
    seconds = 1.0 + (zlib.crc32(ctx.job.id.encode()) % 2000) / 1000.0
    await asyncio.sleep(seconds)
