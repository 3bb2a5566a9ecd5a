"""The agentdispatch side of `agentdispatch bench worker` (run as a program, never imported by the bench).

    AGENTDISPATCH_BENCH_OUT=/tmp/x AGENTDISPATCH_BENCH_IDLE=3 \
        python ours_agent.py start --url ws://127.0.0.1:PORT --api-key devkey --api-secret secret
    # or, the same options through the `agentdispatch worker` command:
    agentdispatch worker start ours_agent.py --url ...

Production mode (`start`), agent_name "ours", a load function that always answers 0 so a busy machine
never makes the worker refuse. The entrypoint takes its timestamps first, writes them, and ends the job.
"""

from __future__ import annotations

import time

from agentdispatch import JobContext, JobProcess, WorkerOptions, cli
from agentdispatch.bench.worker.record import (
    idle_processes,
    monotonic_ns,
    write_job_record,
    write_ready_record,
)


async def entrypoint(ctx: JobContext) -> None:
    mono_ns, wall_ns = monotonic_ns(), time.time_ns()
    job = ctx.job
    write_job_record(mono_ns, wall_ns, job.id, job.dispatch_id, job.room.name, job.state.started_at)
    ctx.shutdown("done")


def prewarm(proc: JobProcess) -> None:
    write_ready_record()


def zero_load() -> float:
    return 0.0


worker_options = WorkerOptions(
    entrypoint_fnc=entrypoint,
    prewarm_fnc=prewarm,
    agent_name="ours",
    num_idle_processes=idle_processes(),
    load_fnc=zero_load,
)

if __name__ == "__main__":
    cli.run_app(worker_options)
