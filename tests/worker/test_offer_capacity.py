"""Offers follow free capacity: a worker at max_jobs is not re-offered the whole queue each time a slot
frees (before: 378 offers declined "at max_jobs" to run 30 jobs with max_jobs=3)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.server import DispatchServer, ServerConfig
from agentdispatch.server.events import Event, JobEvent, JobEventKind
from conftest import JobWatch, dispatch, wait_until

JS_SUCCESS = agent.JobStatus.JS_SUCCESS


@pytest.fixture
async def server() -> AsyncIterator[DispatchServer]:
    """A deadline long enough for 30 jobs through 3 slots on a busy machine."""
    srv = DispatchServer(ServerConfig(port=0, offer_timeout=5.0, dispatch_deadline=300.0))
    await srv.start()
    yield srv
    await srv.aclose()


async def test_thirty_queued_jobs_through_three_slots_cost_few_offers(
    server: DispatchServer, lkapi: api.LiveKitAPI, start_worker: Any, jobs: JobWatch
) -> None:
    kinds: Counter[JobEventKind] = Counter()

    def count(event: Event) -> None:
        if isinstance(event, JobEvent):
            kinds[event.kind] += 1

    server.events.subscribe(count)
    worker = await start_worker(
        agent_name="cap",
        entrypoint_fnc="worker_agents:entry_sleep",
        max_jobs=3,
        num_idle_processes=3,
        ready=3,
    )
    rooms = [f"cap-{i}" for i in range(30)]
    await asyncio.gather(*(dispatch(lkapi, room, "cap", seconds=0.2) for room in rooms))
    await wait_until(lambda: len(jobs.with_status(JS_SUCCESS)) == 30, 240, "30 jobs succeeded")
    offers, assigned = kinds[JobEventKind.OFFERED], kinds[JobEventKind.ASSIGNED]
    declined = sum(worker.offers.declined.values())
    print(f"offers={offers} assigned={assigned} declined={declined} per accepted job={offers / assigned:.2f}")
    assert assigned == 30
    assert offers <= 2 * assigned, (offers, worker.offers.declined)  # before: 378 offers for 30 jobs
