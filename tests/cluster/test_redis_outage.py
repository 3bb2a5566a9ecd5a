"""Redis trouble: the API answers `unavailable`, connections stay up, service resumes by itself.

A real redis-server (AOF, fsync always) is stopped and started again on the same port under a
running dispatch server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.server.store import StoreUnavailable
from agentdispatch.server.store_redis import RedisStore
from agentdispatch.testing.services import RedisProcess, require


@pytest.fixture
def durable_redis() -> Iterator[RedisProcess]:
    with RedisProcess(require("redis-server", "redis-server"), appendonly=True) as proc:
        yield proc


async def test_store_calls_fail_with_store_unavailable_and_recover_on_the_same_client(
    durable_redis: RedisProcess,
) -> None:
    store = RedisStore(durable_redis.url, cluster="outage", socket_timeout=0.5)
    await store.add_job(agent.Job(id="AJ_1", dispatch_id="AD_1"))
    durable_redis.stop()
    with pytest.raises(StoreUnavailable) as err:
        await store.get_job("AJ_1")
    assert err.value.code == "unavailable" and err.value.status == 503
    durable_redis.start()
    job = await store.get_job("AJ_1")
    assert job is not None and job.dispatch_id == "AD_1", "acknowledged before the outage, kept after it"
    await store.aclose()


async def test_twirp_answers_unavailable_while_redis_is_down_and_workers_stay_connected(
    durable_redis: RedisProcess, make_harness: Any
) -> None:
    h = await make_harness(redis_url=durable_redis.url, dispatch_deadline=20.0)
    worker = await h.worker(agent_name="helper")
    durable_redis.stop()
    with pytest.raises(api.TwirpError) as err:
        await h.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="helper", room="during-outage")
        )
    assert err.value.code == "unavailable"
    assert "Redis" in err.value.message
    # the node keeps trying in the background; the worker's socket is untouched meanwhile
    await h.wait_for(
        lambda: any("heartbeat failed" in r.getMessage() for r in _records(h)),
        timeout=15,
        what="a failed heartbeat",
    )
    assert not worker.ws.closed
    durable_redis.start()
    dispatch = await _create_when_back(h, "after-outage")
    (assignment,) = await worker.wait_assignments(1)
    assert assignment.job.dispatch_id == dispatch.id


def _records(h: Any) -> list[Any]:
    import logging

    for handler in logging.getLogger("agentdispatch").handlers:
        if hasattr(handler, "records") and getattr(handler, "bus", None) is h.bus:
            return list(handler.records)
    return []


async def _create_when_back(h: Any, room: str) -> api.AgentDispatch:
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while True:
        try:
            return await h.api.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="helper", room=room)
            )
        except api.TwirpError as exc:
            assert exc.code == "unavailable" and loop.time() < end, f"service did not resume: {exc}"
            await asyncio.sleep(0.1)


async def test_a_job_that_ends_while_redis_is_down_is_recorded_when_it_is_back(
    durable_redis: RedisProcess, make_harness: Any
) -> None:
    h = await make_harness(redis_url=durable_redis.url, dispatch_deadline=20.0)
    worker = await h.worker(agent_name="helper")
    await h.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="helper", room="r"))
    (assignment,) = await worker.wait_assignments(1)
    job_id = assignment.job.id
    durable_redis.stop()
    await worker.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await h.wait_for(
        lambda: any("frame held" in r.getMessage() for r in _records(h)), timeout=15, what="the status held"
    )
    await worker.sync()  # the server still answers this worker: the socket was not cut
    assert not worker.ws.closed
    durable_redis.start()
    await h.wait_job_status(job_id, agent.JobStatus.JS_SUCCESS)
    (listed,) = await h.api.agent_dispatch.list_dispatch("r")
    assert listed.state.jobs[0].state.status == agent.JobStatus.JS_SUCCESS


async def test_migrate_job_while_redis_is_down_keeps_the_job_and_the_socket(
    durable_redis: RedisProcess, make_harness: Any
) -> None:
    h = await make_harness(redis_url=durable_redis.url, dispatch_deadline=20.0)
    worker = await h.worker(agent_name="helper")
    await h.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="helper", room="r"))
    (assignment,) = await worker.wait_assignments(1)
    job_id = assignment.job.id
    durable_redis.stop()
    await worker.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[job_id])))
    await h.wait_for(
        lambda: any("frame held" in r.getMessage() for r in _records(h)), timeout=15, what="migrate held"
    )
    await worker.sync()
    durable_redis.start()
    await h.wait_for(
        lambda: any("held worker frame applied" in r.getMessage() for r in _records(h)),
        timeout=20,
        what="the migration applied",
    )
    assert worker.received.terminations == []
    (listed,) = await h.api.agent_dispatch.list_dispatch("r")
    job = listed.state.jobs[0]
    assert job.state.status == agent.JobStatus.JS_RUNNING and job.state.worker_id == worker.id


async def test_a_job_dropped_half_way_by_a_store_failure_is_placed_again(
    durable_redis: RedisProcess, make_harness: Any
) -> None:
    """Redis fails exactly while an accepted offer is being recorded: the job must not be lost."""
    h = await make_harness(redis_url=durable_redis.url, dispatch_deadline=20.0)
    store = h.server.store
    real_claim = store.claim_job
    failed: list[str] = []

    async def claim_failing_once(job: agent.Job, expected_worker: str = "") -> bool:
        if job.state.status == agent.JobStatus.JS_RUNNING and not failed:  # the assignment's atomic write
            failed.append(job.id)
            raise StoreUnavailable("store (Redis) unavailable: injected")
        return await real_claim(job, expected_worker)

    store.claim_job = claim_failing_once  # type: ignore[method-assign]
    first = await h.worker(agent_name="helper")
    await h.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="helper", room="r"))
    await h.wait_for(lambda: failed, what="the assignment write to fail")
    second = await h.worker(agent_name="helper")
    await h.wait_for(
        lambda: first.received.assignments or second.received.assignments,
        timeout=20,
        what="the job placed again",
    )
    assert any("placing it again" in r.getMessage() for r in _records(h))
    (listed,) = await h.api.agent_dispatch.list_dispatch("r")
    assert [j.id for j in listed.state.jobs] == failed
    assert listed.state.jobs[0].state.status == agent.JobStatus.JS_RUNNING
