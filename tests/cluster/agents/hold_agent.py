"""An agent file for the cluster tests: a job that runs until the test says it may end.

The job writes `<AD_HOLD_DIR>/started-<job id>` (its pid) once, then waits for
`<AD_HOLD_DIR>/finish-<job id>` and returns (JS_SUCCESS). A job process that started twice would
write its started file twice: the test counts the lines.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agentdispatch import JobContext, WorkerOptions, cli

HOLD_DIR = Path(os.environ.get("AD_HOLD_DIR", "."))


async def hold(ctx: JobContext) -> None:
    job_id = ctx.job.id
    with (HOLD_DIR / f"started-{job_id}").open("a") as f:
        f.write(f"{os.getpid()}\n")
    finish = HOLD_DIR / f"finish-{job_id}"
    while not finish.exists():  # noqa: ASYNC110 - the signal is a file another process creates
        await asyncio.sleep(0.05)


worker_options = WorkerOptions(
    entrypoint_fnc=hold,
    agent_name="hold",
    load_fnc=lambda: 0.0,  # the test machine's CPU must not make the worker FULL
    num_idle_processes=1,
    shutdown_process_timeout=2.0,
    drain_timeout=5.0,
)

if __name__ == "__main__":
    cli.run_app(worker_options)
