"""The agent the chaos benchmark runs (a worker file, run as a program, never imported by the driver).

    agentdispatch worker start src/agentdispatch/bench/chaos/agents/chaos_agent.py \
        --url ws://127.0.0.1:PORT --api-key devkey --api-secret secret --max-jobs 4
    python src/agentdispatch/bench/chaos/agents/chaos_agent.py start --url ... --api-key devkey \
        --api-secret secret

Production mode, agent_name "chaos", two prewarmed idle processes, a load function that always answers 0
(so a busy 2-core machine never makes the worker refuse; `--max-jobs` is the only cap). Each job reads
its plan from the dispatch metadata (`chaos_record.job_metadata`), records its start, sleeps for the
planned time, records its end and returns: the job ends JS_SUCCESS. A job process that is killed keeps
its record without an end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from agentdispatch import JobContext, WorkerOptions, cli
from agentdispatch.bench.chaos.record import Attempt, parse_job_metadata, write_attempt

AGENT_NAME = "chaos"
IDLE_PROCESSES = 2


async def entrypoint(ctx: JobContext) -> None:
    started = time.time()
    job = ctx.job
    plan = parse_job_metadata(job.metadata)
    attempt = Attempt(
        job_id=job.id,
        pid=ctx.proc.pid,
        start=started,
        end=None,
        dispatch_id=job.dispatch_id,
        room=job.room.name,
        worker_id=ctx.worker_id,
        ppid=os.getppid(),
    )
    write_attempt(plan.run_dir, attempt)
    await asyncio.sleep(plan.duration)
    write_attempt(plan.run_dir, dataclasses.replace(attempt, end=time.time()))


def zero_load() -> float:
    return 0.0


worker_options = WorkerOptions(
    entrypoint_fnc=entrypoint,
    agent_name=AGENT_NAME,
    num_idle_processes=IDLE_PROCESSES,
    load_fnc=zero_load,
)

if __name__ == "__main__":
    cli.run_app(worker_options)
