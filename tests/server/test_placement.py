"""Placement: spreading bursts, waiting for capacity, deadlines, refusals, timeouts, and the queue bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

CREATE = "livekit.AgentDispatchService/CreateDispatch"


def dispatch(agent_name: str, room: str, **fields: Any) -> api.CreateAgentDispatchRequest:
    return api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, **fields)


async def _prefer(first: Any, second: Any) -> None:
    """Make `first` the scheduler's first choice by giving `second` a higher reported load."""
    await first.report(0.0)
    await second.report(0.5)
    await first.sync()
    await second.sync()


async def test_burst_spreads_over_workers(harness: Any) -> None:
    """Without any status report in between, a burst spreads evenly: each offer raises the chosen
    worker's projection at once. The workers first take one job each, one after another (each one
    answered, so none is on probation; see the next test), which makes the outcome independent of how
    the burst's requests interleave with the workers' answers."""
    workers = [await harness.worker(agent_name="burst") for _ in range(10)]
    for i in range(10):
        await harness.api.agent_dispatch.create_dispatch(dispatch("burst", f"warm-{i}"))
        await harness.wait_for(
            lambda n=i + 1: sum(len(w.received.assignments) for w in workers) == n, what=f"{i + 1} assigned"
        )
    assert sorted(len(w.received.assignments) for w in workers) == [1] * 10  # each to an empty worker
    await asyncio.gather(
        *(harness.api.agent_dispatch.create_dispatch(dispatch("burst", f"burst-{i}")) for i in range(40))
    )
    await harness.wait_for(
        lambda: sum(len(w.received.assignments) for w in workers) == 50, what="50 assignments"
    )
    assert sorted(len(w.received.assignments) for w in workers) == [5] * 10
    assert sum(len(w.received.offers) for w in workers) == 50  # every offer accepted, none wasted


@pytest.mark.parametrize("server_config", [{"offer_timeout": 120.0, "dispatch_deadline": 120.0}])
async def test_burst_with_fresh_workers_holds_two_offers_each_until_they_answer(harness: Any) -> None:
    """A worker that has not answered an offer yet holds at most two unanswered offers; a burst meanwhile
    goes to the worker that has answered, up to its projected capacity (1.0 at 0.1 per job). Nothing
    is lost: the silent workers' offers stay pending until they answer or time out."""
    proven = await harness.worker(agent_name="fresh")
    await harness.api.agent_dispatch.create_dispatch(dispatch("fresh", "fresh-warm"))
    await proven.wait_assignments(1)
    silent = [await harness.worker(agent_name="fresh", policy="ignore") for _ in range(3)]
    await asyncio.gather(
        *(harness.api.agent_dispatch.create_dispatch(dispatch("fresh", f"fresh-{i}")) for i in range(15))
    )
    await harness.wait_for(lambda: len(proven.received.assignments) == 10, what="proven worker full")
    for w in silent:
        await w.sync()
    assert [len(w.received.offers) for w in silent] == [2, 2, 2]  # held, not a burst each
    assert len(proven.received.offers) == 10  # 1 + 9: its projection reached 1.0
    jobs = [j for i in range(15) for j in await harness.list_jobs(f"fresh-{i}")]
    assert sum(j.state.status == agent.JobStatus.JS_RUNNING for j in jobs) == 9
    assert sum(j.state.status == agent.JobStatus.JS_PENDING for j in jobs) == 6  # waiting, not dropped


async def test_equal_reports_prefer_the_worker_holding_fewer_jobs(harness: Any) -> None:
    """Workers whose reports do not move with their jobs (a constant or capacity-only load_fnc) look alike
    after every report: the next job goes to the one running fewer, not to a coin toss."""
    busy = await harness.worker(agent_name="tie")
    light = await harness.worker(agent_name="tie")
    await _prefer(busy, light)
    for i in range(3):
        await harness.api.agent_dispatch.create_dispatch(dispatch("tie", f"tie-busy-{i}"))
        await busy.wait_assignments(i + 1)
    assert len(light.received.offers) == 0
    for i in range(3):  # light holds i jobs, busy 3: both report 0.0, the next job is light's
        await busy.report(0.0, job_count=3)
        await light.report(0.0, job_count=i)
        await busy.sync()
        await light.sync()
        await harness.api.agent_dispatch.create_dispatch(dispatch("tie", f"tie-light-{i}"))
        await light.wait_assignments(i + 1)
    assert len(busy.received.offers) == 3
    assert len(light.received.offers) == 3


async def test_queued_job_runs_when_a_worker_registers(harness: Any) -> None:
    created = await harness.api.agent_dispatch.create_dispatch(dispatch("late", "queue-room"))
    [job] = await harness.list_jobs("queue-room")
    assert job.state.status == agent.JobStatus.JS_PENDING
    w = await harness.worker(agent_name="late")
    [offer] = await w.wait_offers(1)
    assert offer.job.dispatch_id == created.id
    await w.wait_assignments(1)
    [job] = await harness.list_jobs("queue-room")
    assert job.state.status == agent.JobStatus.JS_RUNNING
    assert job.state.worker_id == w.id
    assert job.state.started_at > 0


@pytest.mark.parametrize("server_config", [{"dispatch_deadline": 0.5}])
async def test_deadline_fails_job_with_no_capacity(harness: Any) -> None:
    await harness.api.agent_dispatch.create_dispatch(dispatch("nobody", "deadline-room"))
    [job] = await harness.list_jobs("deadline-room")
    await harness.wait_job_status(job.id, agent.JobStatus.JS_FAILED)
    [job] = await harness.list_jobs("deadline-room")
    assert job.state.status == agent.JobStatus.JS_FAILED
    assert job.state.reason == agent.JobStateReason.JSR_NO_CAPACITY
    assert "no worker available" in job.state.error
    assert "nobody" in job.state.error
    assert job.state.ended_at > 0
    # a worker arriving afterwards does not get the failed job
    w = await harness.worker(agent_name="nobody")
    await w.sync()
    assert w.received.offers == []


@pytest.mark.parametrize("server_config", [{"dispatch_deadline": 0.5}])
async def test_deadline_applies_while_only_refusing_workers_exist(harness: Any) -> None:
    refuser = await harness.worker(agent_name="picky", policy="reject")
    await harness.api.agent_dispatch.create_dispatch(dispatch("picky", "picky-room"))
    await refuser.wait_offers(1)
    [job] = await harness.list_jobs("picky-room")
    await harness.wait_job_status(job.id, agent.JobStatus.JS_FAILED)
    [job] = await harness.list_jobs("picky-room")
    assert job.state.reason == agent.JobStateReason.JSR_NO_CAPACITY
    assert refuser.received.assignments == []


async def test_reject_moves_on_to_the_next_worker(harness: Any) -> None:
    refuser = await harness.worker(agent_name="rj", policy="reject")
    taker = await harness.worker(agent_name="rj")
    await _prefer(refuser, taker)
    await harness.api.agent_dispatch.create_dispatch(dispatch("rj", "reject-room"))
    [assignment] = await taker.wait_assignments(1)
    assert refuser.offered_ids() == [assignment.job.id]
    assert refuser.received.assignments == []
    [job] = await harness.list_jobs("reject-room")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, taker.id)


async def test_offer_timeout_moves_on_to_the_next_worker(harness: Any) -> None:
    silent = await harness.worker(agent_name="to", policy="ignore")
    taker = await harness.worker(agent_name="to")
    await _prefer(silent, taker)
    await harness.api.agent_dispatch.create_dispatch(dispatch("to", "timeout-room"))
    [assignment] = await taker.wait_assignments(1)
    assert silent.offered_ids() == [assignment.job.id]
    [job] = await harness.list_jobs("timeout-room")
    assert job.state.worker_id == taker.id


async def test_late_accept_is_terminated_and_job_stays_on_the_other_worker(harness: Any) -> None:
    late = await harness.worker(agent_name="late-acc", policy="ignore")
    taker = await harness.worker(agent_name="late-acc")
    await _prefer(late, taker)
    await harness.api.agent_dispatch.create_dispatch(dispatch("late-acc", "late-room"))
    [assignment] = await taker.wait_assignments(1)
    job_id = assignment.job.id
    await late.answer(job_id, True)  # far too late
    await late.wait_termination(job_id)
    assert late.received.assignments == []
    await taker.sync()
    assert taker.received.terminations == []
    [job] = await harness.list_jobs("late-room")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, taker.id)


async def test_late_refusal_is_ignored_quietly(harness: Any) -> None:
    late = await harness.worker(agent_name="late-rej", policy="ignore")
    taker = await harness.worker(agent_name="late-rej")
    await _prefer(late, taker)
    await harness.api.agent_dispatch.create_dispatch(dispatch("late-rej", "late-rej-room"))
    [assignment] = await taker.wait_assignments(1)
    await late.answer(assignment.job.id, False)
    await late.sync()
    assert late.received.terminations == []
    [job] = await harness.list_jobs("late-rej-room")
    assert job.state.worker_id == taker.id


async def test_terminate_ends_the_job_without_retry(harness: Any) -> None:
    terminator = await harness.worker(agent_name="term", policy="terminate")
    other = await harness.worker(agent_name="term")
    await _prefer(terminator, other)
    await harness.api.agent_dispatch.create_dispatch(dispatch("term", "term-room"))
    [offer] = await terminator.wait_offers(1)
    await harness.wait_job_status(offer.job.id, agent.JobStatus.JS_FAILED)
    await other.sync()
    assert other.received.offers == []
    [job] = await harness.list_jobs("term-room")
    assert job.state.status == agent.JobStatus.JS_FAILED
    assert job.state.ended_at > 0
    assert job.state.error


async def test_single_worker_that_times_out_gets_the_job_again_later(harness: Any) -> None:
    w = await harness.worker(agent_name="retry", policy="ignore")
    await harness.api.agent_dispatch.create_dispatch(dispatch("retry", "retry-room"))
    [offer] = await w.wait_offers(1)
    # the offer timed out and the job is waiting; a status report makes the worker a candidate again
    session = harness.server.registry.get(w.id)
    await harness.wait_for(lambda: not session.offers, what="offer withdrawn after the offer timeout")
    assert harness.server.dispatcher.is_pending(offer.job.id)
    w.opts.policy = "accept"
    await w.report(0.1)
    [assignment] = await w.wait_assignments(1)
    assert assignment.job.id == offer.job.id


@pytest.mark.parametrize("server_config", [{"queue_limit": 2}])
async def test_queue_limit_answers_resource_exhausted(harness: Any, make_token: Any) -> None:
    await harness.api.agent_dispatch.create_dispatch(dispatch("none", "q1"))
    await harness.api.agent_dispatch.create_dispatch(dispatch("none", "q2"))
    with pytest.raises(api.TwirpError) as info:
        await harness.api.agent_dispatch.create_dispatch(dispatch("none", "q3"))
    assert (info.value.code, info.value.status) == ("resource_exhausted", 429)
    status, body = await harness.twirp(
        CREATE, {"room": "q1", "agent_name": "none"}, make_token(room_admin=True, room="q1")
    )
    assert (status, body["code"]) == (429, "resource_exhausted")
    # refused dispatches leave nothing behind
    rooms = await harness.api.room.list_rooms(api.ListRoomsRequest())
    assert sorted(r.name for r in rooms.rooms) == ["q1", "q2"]
    assert len(await harness.api.agent_dispatch.list_dispatch("q1")) == 1
    # once a worker drains the queue, dispatching works again
    w = await harness.worker(agent_name="none")
    await w.wait_assignments(2)
    await harness.api.agent_dispatch.create_dispatch(dispatch("none", "q3"))
    await w.wait_assignments(3)


async def test_accept_for_a_job_offered_to_someone_else_is_refused(harness: Any) -> None:
    holder = await harness.worker(agent_name="steal", policy="ignore")
    thief = await harness.worker(agent_name="steal", policy="ignore")
    await _prefer(holder, thief)
    await harness.api.agent_dispatch.create_dispatch(dispatch("steal", "steal-room"))
    [offer] = await holder.wait_offers(1)
    await thief.answer(offer.job.id, True)
    await thief.wait_termination(offer.job.id)
    assert thief.received.assignments == []
    await holder.answer(offer.job.id, True)  # the real offer still stands
    [assignment] = await holder.wait_assignments(1)
    assert assignment.job.id == offer.job.id


async def test_repeated_accept_from_the_owner_does_not_terminate_its_job(harness: Any) -> None:
    w = await harness.worker(agent_name="twice")
    await harness.api.agent_dispatch.create_dispatch(dispatch("twice", "twice-room"))
    [assignment] = await w.wait_assignments(1)
    await w.answer(assignment.job.id, True)  # a duplicate answer for a job it already runs
    await w.sync()
    [job] = await harness.list_jobs("twice-room")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, w.id)
    # server and worker must agree: a job the server keeps RUNNING on w is not one w was told to stop
    assert w.received.terminations == []


async def test_queued_jobs_are_offered_in_creation_order(harness: Any) -> None:
    rooms = [f"fifo-{i}" for i in range(5)]
    for room in rooms:
        await harness.api.agent_dispatch.create_dispatch(dispatch("fifo", room))
    w = await harness.worker(agent_name="fifo")
    offers = await w.wait_offers(5)
    assert [o.job.room.name for o in offers] == rooms
