"""How jobs end: worker status updates, DeleteDispatch, DeleteRoom — as seen through ListDispatch."""

from __future__ import annotations

from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent


async def _running_job(
    harness: Any, room: str, agent_name: str = "ender", restart_policy: int = 0, **worker_opts: Any
) -> tuple[Any, str]:
    w = await harness.worker(agent_name=agent_name, **worker_opts)
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, restart_policy=restart_policy)
    )
    [assignment] = await w.wait_assignments(1)
    await w.sync()  # the worker's JS_RUNNING update is processed
    return w, assignment.job.id


async def test_job_success_is_visible(harness: Any) -> None:
    w, job_id = await _running_job(harness, "ok-room")
    [job] = await harness.list_jobs("ok-room")
    assert (job.id, job.state.status, job.state.ended_at) == (job_id, agent.JobStatus.JS_RUNNING, 0)
    await w.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await w.sync()
    [job] = await harness.list_jobs("ok-room")
    assert job.state.status == agent.JobStatus.JS_SUCCESS
    assert job.state.error == ""
    assert job.state.ended_at >= job.state.started_at > 0
    assert job.state.worker_id == w.id


async def test_job_failure_with_error_is_visible(harness: Any) -> None:
    never = api.JobRestartPolicy.JRP_NEVER
    w, job_id = await _running_job(harness, "fail-room", restart_policy=never)
    await w.finish(job_id, agent.JobStatus.JS_FAILED, error="entrypoint raised ValueError: boom")
    await w.sync()
    [job] = await harness.list_jobs("fail-room")
    assert job.state.status == agent.JobStatus.JS_FAILED
    assert job.state.error == "entrypoint raised ValueError: boom"
    assert job.state.ended_at > 0
    await w.sync()
    assert len(w.received.offers) == 1  # JRP_NEVER: not offered again


async def test_job_failure_under_default_policy_is_retried_visibly(harness: Any) -> None:
    w, job_id = await _running_job(harness, "retry-room")
    other = await harness.worker(agent_name="ender")
    await w.finish(job_id, agent.JobStatus.JS_FAILED, error="interrupted (worker stopped)")
    [offer] = await other.wait_offers(1)
    assert (offer.job.id, offer.resuming) == (job_id, True)
    await other.wait_assignments(1)
    [job] = await harness.list_jobs("retry-room")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, other.id)
    assert job.state.error == "restart 1/3 after: interrupted (worker stopped)"


async def test_update_from_a_worker_that_does_not_own_the_job_is_ignored(harness: Any) -> None:
    owner, job_id = await _running_job(harness, "own-room")
    intruder = await harness.worker(agent_name="ender")
    await intruder.finish(job_id, agent.JobStatus.JS_FAILED, error="not mine")
    await intruder.sync()
    [job] = await harness.list_jobs("own-room")
    assert job.state.status == agent.JobStatus.JS_RUNNING
    assert job.state.worker_id == owner.id
    assert job.state.error == ""
    # the owner's own update still counts
    await owner.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await owner.sync()
    [job] = await harness.list_jobs("own-room")
    assert job.state.status == agent.JobStatus.JS_SUCCESS


async def test_updates_after_the_end_are_ignored(harness: Any) -> None:
    w, job_id = await _running_job(harness, "after-room")
    await w.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await w.finish(job_id, agent.JobStatus.JS_FAILED, error="too late")
    await w.finish(job_id, agent.JobStatus.JS_RUNNING)
    await w.sync()
    [job] = await harness.list_jobs("after-room")
    assert (job.state.status, job.state.error) == (agent.JobStatus.JS_SUCCESS, "")


async def test_update_for_unknown_job_is_ignored(harness: Any) -> None:
    w = await harness.worker(agent_name="ender")
    await w.finish("AJ_doesnotexist", agent.JobStatus.JS_SUCCESS)
    await w.sync()
    assert not w.closed.is_set()


async def test_finished_job_frees_capacity_for_a_queued_one(harness: Any) -> None:
    w, job_id = await _running_job(harness, "cap-1")
    w.opts.policy = "reject"  # busy: the next job is refused and waits
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="ender", room="cap-2")
    )
    [_, refused] = await w.wait_offers(2)
    await w.sync()
    assert len(w.received.assignments) == 1
    w.opts.policy = "accept"
    await w.finish(job_id, agent.JobStatus.JS_SUCCESS)  # ending a job is a capacity event
    await w.wait_assignments(2)
    assert w.received.assignments[1].job.id == refused.job.id
    assert w.received.assignments[1].job.room.name == "cap-2"


async def test_delete_dispatch_terminates_running_job(harness: Any) -> None:
    w, job_id = await _running_job(harness, "del-room")
    [dispatch] = await harness.api.agent_dispatch.list_dispatch("del-room")
    deleted = await harness.api.agent_dispatch.delete_dispatch(dispatch.id, "del-room")
    assert deleted.state.deleted_at > 0
    await w.wait_termination(job_id)
    [job] = deleted.state.jobs
    assert job.state.status == agent.JobStatus.JS_CANCELLED
    assert job.state.reason == agent.JobStateReason.JSR_DISPATCH_DELETED
    assert job.state.ended_at > 0
    [listed] = await harness.list_jobs("del-room")
    assert listed.state.status == agent.JobStatus.JS_CANCELLED
    # the worker's late final status does not resurrect or overwrite it
    await w.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await w.sync()
    [listed] = await harness.list_jobs("del-room")
    assert listed.state.status == agent.JobStatus.JS_CANCELLED


async def test_delete_dispatch_cancels_a_queued_job(harness: Any) -> None:
    created = await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="absent", room="del-queued")
    )
    deleted = await harness.api.agent_dispatch.delete_dispatch(created.id, "del-queued")
    [job] = deleted.state.jobs
    assert job.state.status == agent.JobStatus.JS_CANCELLED
    assert job.state.reason == agent.JobStateReason.JSR_DISPATCH_DELETED
    w = await harness.worker(agent_name="absent")
    await w.sync()
    assert w.received.offers == []


async def test_delete_dispatch_is_idempotent(harness: Any) -> None:
    w, job_id = await _running_job(harness, "twice")
    [dispatch] = await harness.api.agent_dispatch.list_dispatch("twice")
    first = await harness.api.agent_dispatch.delete_dispatch(dispatch.id, "twice")
    second = await harness.api.agent_dispatch.delete_dispatch(dispatch.id, "twice")
    assert second.state.deleted_at == first.state.deleted_at
    await w.sync()
    assert w.received.terminations == [job_id]


async def test_delete_dispatch_in_wrong_room_is_not_found(harness: Any) -> None:
    _, _ = await _running_job(harness, "right")
    [dispatch] = await harness.api.agent_dispatch.list_dispatch("right")
    with pytest.raises(api.TwirpError) as info:
        await harness.api.agent_dispatch.delete_dispatch(dispatch.id, "wrong")
    assert info.value.code == "not_found"


async def test_delete_room_terminates_jobs_and_removes_the_room(harness: Any) -> None:
    w, job_id = await _running_job(harness, "doomed")
    other, other_job = await _running_job(harness, "survivor", agent_name="other")
    await harness.api.room.delete_room(api.DeleteRoomRequest(room="doomed"))
    await w.wait_termination(job_id)
    ended = await harness.wait_job_status(job_id, agent.JobStatus.JS_CANCELLED)
    assert ended.state.reason == agent.JobStateReason.JSR_ROOM_CLOSED
    rooms = await harness.api.room.list_rooms(api.ListRoomsRequest())
    assert [r.name for r in rooms.rooms] == ["survivor"]
    assert await harness.api.agent_dispatch.list_dispatch("doomed") == []
    await other.sync()
    assert other.received.terminations == []
    [job] = await harness.list_jobs("survivor")
    assert (job.id, job.state.status) == (other_job, agent.JobStatus.JS_RUNNING)


async def test_empty_timeout_closes_an_unjoined_room(harness: Any) -> None:
    w = await harness.worker()
    # 3 s: the job is assigned before the room closes even on a loaded machine
    await harness.api.room.create_room(api.CreateRoomRequest(name="nobody-came", empty_timeout=3))
    [assignment] = await w.wait_assignments(1)
    await w.wait_termination(assignment.job.id, timeout=20)
    ended = await harness.wait_job_status(assignment.job.id, agent.JobStatus.JS_CANCELLED)
    assert ended.state.reason == agent.JobStateReason.JSR_ROOM_CLOSED
    assert (await harness.api.room.list_rooms(api.ListRoomsRequest())).rooms == []
