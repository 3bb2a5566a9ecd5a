"""The livekit-agents side of `agentdispatch bench worker` (run as a script, never imported).

    AGENTDISPATCH_BENCH_OUT=/tmp/x AGENTDISPATCH_BENCH_IDLE=3 \
        python lk_agent.py start --url ws://127.0.0.1:PORT --api-key devkey --api-secret secret

The same agent as `ours_agent.py`, written against livekit-agents: production mode, agent_name
"lk", load always 0. The entrypoint never joins the room (our server has no media plane).
"""

from __future__ import annotations

import time

from livekit.agents import JobContext, JobProcess, WorkerOptions, cli

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


if __name__ == "__main__":
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            prewarm_fnc=prewarm,
            agent_name="lk",
            num_idle_processes=idle_processes(),
            load_fnc=zero_load,
            # production would bind the health server to :8081; any free port on loopback instead
            host="127.0.0.1",
            port=0,
        )
    )
