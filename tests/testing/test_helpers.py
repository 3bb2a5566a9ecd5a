"""agentdispatch.testing: the public helpers behave as documented against the real server."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing import SimWorker, SimWorkerOptions, wait_until

JOBS = 15  # more than the 10 the server gives a worker between two of its status reports (0.1 per job)
SLOW_DEADLINE = {"dispatch_deadline": 20.0}


async def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = iter([0, "", None, "ready"])
    assert await wait_until(lambda: next(calls), timeout=5, interval=0.001) == "ready"


async def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the moon"):
        await wait_until(lambda: False, timeout=0.05, what="the moon", interval=0.01)


async def connect_and_dispatch(
    harness: Any, lkapi: api.LiveKitAPI, opts: SimWorkerOptions
) -> tuple[SimWorker, list[str]]:
    """Connect one SimWorker with `opts` and create JOBS dispatches for it; the worker and the rooms."""
    worker = SimWorker(opts, harness.http)
    await worker.connect()
    rooms = [f"{opts.agent_name}-{i}" for i in range(JOBS)]
    for room in rooms:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=opts.agent_name, room=room)
        )
    return worker, rooms


async def statuses(harness: Any, rooms: list[str]) -> Counter[str]:
    jobs = [job for room in rooms for job in await harness.list_jobs(room)]
    return Counter(agent.JobStatus.Name(job.state.status) for job in jobs)


@pytest.mark.parametrize("server_config", [SLOW_DEADLINE])
async def test_a_simworker_that_reports_status_takes_every_job(harness: Any, lkapi: api.LiveKitAPI) -> None:
    opts = SimWorkerOptions(url=harness.server.url, agent_name="reporting", status_interval=0.5)
    worker, rooms = await connect_and_dispatch(harness, lkapi, opts)
    try:
        await wait_until(lambda: len(worker.received.assignments) == JOBS, timeout=10, what="all assigned")
        assert worker.running == {a.job.id for a in worker.received.assignments}
        assert await statuses(harness, rooms) == Counter({"JS_RUNNING": JOBS})
    finally:
        await worker.aclose()


@pytest.mark.parametrize("server_config", [SLOW_DEADLINE])
async def test_a_silent_simworker_is_full_after_ten_jobs_until_it_reports(
    harness: Any, lkapi: api.LiveKitAPI
) -> None:
    opts = SimWorkerOptions(url=harness.server.url, agent_name="silent")
    worker, rooms = await connect_and_dispatch(harness, lkapi, opts)
    try:
        await wait_until(lambda: len(worker.received.assignments) == 10, timeout=10, what="ten assignments")
        assert await statuses(harness, rooms) == Counter({"JS_RUNNING": 10, "JS_PENDING": JOBS - 10})
        await worker.report(0.0, job_count=10)  # what status_interval would have sent
        await wait_until(lambda: len(worker.received.assignments) == JOBS, timeout=10, what="the other five")
    finally:
        await worker.aclose()
