"""A job process killed from outside (OOM killer, an operator's SIGKILL) did not end its work: the worker
reports it `interrupted (job process was killed by SIGKILL)`, so the server resumes it per restart policy
even in a room nobody has joined yet (a crash of the agent's own code would not be resumed there)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from livekit import api
from livekit.protocol import agent

from conftest import JobWatch, read_record, wait_record, wait_until

JS_RUNNING = agent.JobStatus.JS_RUNNING


async def test_a_job_process_killed_from_outside_is_interrupted_and_resumed(
    lkapi: api.LiveKitAPI, start_worker: Any, jobs: JobWatch, out_file: Any
) -> None:
    await start_worker(agent_name="killme", entrypoint_fnc="worker_agents:entry_wait", num_idle_processes=1)
    out = out_file("first")
    req = api.CreateAgentDispatchRequest(agent_name="killme", room="oom", metadata=json.dumps({"out": out}))
    await lkapi.agent_dispatch.create_dispatch(req)
    first = await wait_record(out, timeout=30)
    os.kill(first["pid"], signal.SIGKILL)

    def resumed() -> agent.Job | None:
        job = jobs.latest.get(first["job_id"])
        ok = job is not None and job.state.status == JS_RUNNING and "restart 1/" in job.state.error
        return job if ok else None

    job = await wait_until(resumed, 60, "the killed job resumed")
    assert "after: interrupted (job process was killed by SIGKILL)" in job.state.error
    # the resumed run starts in a new job process, which writes the record again
    await wait_until(lambda: read_record(out).get("pid") not in (None, first["pid"]), 30, "a second run")
    assert read_record(out)["job_id"] == first["job_id"]
