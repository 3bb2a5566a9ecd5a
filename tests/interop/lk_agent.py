"""A minimal real livekit-agents worker used by the interop tests (run as a subprocess, never imported).

Each job writes one JSON record ``$OUT/<job id>.json`` describing what the entrypoint saw, then ends the job
without joining the room (our server has no media plane). Usage:

    OUT=/tmp/x AGENT_NAME=alpha python lk_agent.py start --url ws://127.0.0.1:PORT \
        --api-key devkey --api-secret secret
"""

from __future__ import annotations

import json
import os
import tempfile

from livekit.agents import JobContext, WorkerOptions, cli


async def entrypoint(ctx: JobContext) -> None:
    job = ctx.job
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "job_id": job.id,
        "dispatch_id": job.dispatch_id,
        "room": job.room.name,
        "metadata": job.metadata,
        "agent_name": job.agent_name,
        "worker_agent_name": os.environ.get("AGENT_NAME", ""),
    }
    out_dir = os.environ["OUT"]
    # write then rename, so a reader never sees a half-written file
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, os.path.join(out_dir, f"{job.id}.json"))
    ctx.shutdown("done")


def constant_load() -> float:
    # production mode refuses jobs above 0.7 CPU load; a fixed value keeps a busy test machine from
    # turning the worker FULL and the tests flaky
    return 0.0


if __name__ == "__main__":
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            agent_name=os.environ.get("AGENT_NAME", ""),
            num_idle_processes=1,
            load_fnc=constant_load,
            # production mode would bind the health server to :8081; several workers run side by side
            host="127.0.0.1",
            port=0,
        )
    )
