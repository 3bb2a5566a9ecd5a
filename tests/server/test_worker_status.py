"""Worker status after registration: load sanitised on arrival, selection by it, ping/pong."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent


@pytest.mark.parametrize(
    ("reported", "stored"),
    [(math.nan, 1.0), (math.inf, 1.0), (-math.inf, 1.0), (2.0, 1.0), (-1.0, 0.0), (0.5, 0.5)],
)
async def test_reported_load_is_sanitised(harness: Any, reported: float, stored: float) -> None:
    w = await harness.worker(agent_name="loady")
    await w.report(reported)
    await w.sync()
    session = harness.server.registry.get(w.id)
    assert session.load.reported == stored


async def test_load_sanitised_for_json_workers_too(harness: Any) -> None:
    from agentdispatch.protocol import Encoding

    w = await harness.worker(agent_name="json-loady", encoding=Encoding.JSON)
    await w.report(math.nan)
    await w.sync()
    assert harness.server.registry.get(w.id).load.reported == 1.0


async def _dispatch_and_find_winner(harness: Any, room: str, workers: list[Any]) -> Any:
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="pick", room=room)
    )
    await harness.wait_for(lambda: any(w.received.assignments for w in workers), what="an assignment")
    return next(w for w in workers if w.received.assignments)


@pytest.mark.parametrize("bad_load", [math.nan, math.inf, 2.0])
async def test_unusable_load_counts_as_full(harness: Any, bad_load: float) -> None:
    broken = await harness.worker(agent_name="pick")
    fine = await harness.worker(agent_name="pick")
    await broken.report(bad_load)
    await fine.report(0.2)
    await broken.sync()
    await fine.sync()
    winner = await _dispatch_and_find_winner(harness, f"room-{bad_load}", [broken, fine])
    assert winner is fine
    assert broken.received.offers == []


async def test_negative_load_counts_as_idle_not_infinitely_attractive(harness: Any) -> None:
    negative = await harness.worker(agent_name="pick")
    other = await harness.worker(agent_name="pick")
    await negative.report(-1.0)
    await other.report(0.2)
    await negative.sync()
    await other.sync()
    # -1 is treated as 0: preferred over 0.2 ...
    assert await _dispatch_and_find_winner(harness, "neg-1", [negative, other]) is negative
    # ... but only like an idle worker: after two more jobs (0 + 3 x 0.1 projected) the 0.2 worker wins
    for i in range(2):
        await harness.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="pick", room=f"neg-{i + 2}")
        )
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="pick", room="neg-4")
    )
    await harness.wait_for(lambda: len(negative.received.assignments) + len(other.received.assignments) == 4)
    assert len(other.received.assignments) >= 1


async def test_full_status_removes_worker_from_selection(harness: Any) -> None:
    full = await harness.worker(agent_name="pick")
    available = await harness.worker(agent_name="pick")
    await full.report(0.0, status=agent.WorkerStatus.WS_FULL)
    await available.report(0.9)
    await full.sync()
    await available.sync()
    assert not harness.server.registry.is_eligible(harness.server.registry.get(full.id))
    winner = await _dispatch_and_find_winner(harness, "full-room", [full, available])
    assert winner is available
    assert full.received.offers == []


async def test_full_status_without_load_keeps_last_load(harness: Any) -> None:
    w = await harness.worker(agent_name="keep")
    await w.report(0.4)
    await w.report(0.0, status=agent.WorkerStatus.WS_FULL)  # status-only update: load not sent
    await w.sync()
    session = harness.server.registry.get(w.id)
    assert session.load.reported == pytest.approx(0.4)
    assert session.status == agent.WorkerStatus.WS_FULL


async def test_queued_job_waits_for_full_worker_to_become_available(harness: Any) -> None:
    w = await harness.worker(agent_name="busy")
    await w.report(0.9, status=agent.WorkerStatus.WS_FULL)
    await w.sync()
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="busy", room="wait")
    )
    await w.sync()
    assert w.received.offers == []
    await w.report(0.3)
    assert len(await w.wait_assignments(1)) == 1


async def test_ping_pong_echoes_timestamp(harness: Any) -> None:
    w = await harness.worker(agent_name="pinger")
    stamp = 1_234_567_890_123
    before_ms = time.time() * 1000
    await w.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=stamp)))
    await harness.wait_for(lambda: w.received.pongs, what="pong")
    after_ms = time.time() * 1000
    pong = w.received.pongs[0]
    assert pong.last_timestamp == stamp
    assert before_ms - 1000 <= pong.timestamp <= after_ms + 1000  # server wall clock in ms


async def test_each_ping_gets_its_own_pong(harness: Any) -> None:
    w = await harness.worker(agent_name="pinger")
    for stamp in (1, 2, 3):
        await w.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=stamp)))
    await harness.wait_for(lambda: len(w.received.pongs) == 3)
    assert [p.last_timestamp for p in w.received.pongs] == [1, 2, 3]


async def test_draining_worker_gets_no_offers(harness: Any) -> None:
    draining = await harness.worker(agent_name="pick")
    other = await harness.worker(agent_name="pick")
    await draining.send(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.0, draining=True)))
    await other.report(0.8)
    await draining.sync()
    await other.sync()
    session = harness.server.registry.get(draining.id)
    assert session.draining and not harness.server.registry.is_eligible(session)
    assert await _dispatch_and_find_winner(harness, "drain-room", [draining, other]) is other
    assert draining.received.offers == []


async def test_available_after_full_is_worth_the_slots_it_freed_not_the_queue(harness: Any) -> None:
    """A worker that said FULL holding 2 jobs and reports AVAILABLE holding 1 gets one offer, however
    many jobs wait; AVAILABLE while holding as many as when it was full lifts the cap (it grew)."""
    w = await harness.worker(agent_name="cap2")
    for i in range(2):
        await harness.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="cap2", room=f"cap2-{i}")
        )
    first = await w.wait_assignments(2)
    await w.report(0.0, status=agent.WorkerStatus.WS_FULL, job_count=2)
    await w.sync()
    for i in range(2, 7):  # five wait
        await harness.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="cap2", room=f"cap2-{i}")
        )
    await w.sync()
    assert len(w.received.offers) == 2
    await w.finish(first[0].job.id)
    await w.report(0.1, job_count=1)  # AVAILABLE, one slot free
    await w.wait_assignments(3)
    await w.sync()
    await w.sync()
    assert len(w.received.offers) == 3, "AVAILABLE after FULL brought more offers than slots freed"
    session = harness.server.registry.get(w.id)
    assert not harness.server.registry.is_eligible(session)  # holds 2 again: no more until news
    await w.report(0.2, job_count=2)  # AVAILABLE holding as many as when it said FULL: it has more room
    await w.wait_assignments(5)
