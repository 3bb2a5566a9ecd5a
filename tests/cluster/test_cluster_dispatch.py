"""Two or three dispatch servers on one real redis-server: any node, any worker.

In-process servers (the shared `make_harness` fixture with `redis_url`), real WebSocket workers,
the real livekit-api client. A dispatch created through one node reaches a worker connected to
another; ListDispatch through any node shows the same job; a deletion reaches the worker wherever it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.services import RedisProcess

JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS


async def cluster_of(make_harness: Any, redis: RedisProcess, n: int, **config: Any) -> list[Any]:
    return [await make_harness(redis_url=redis.url, **config) for _ in range(n)]


async def published(harness: Any, worker_id: str) -> None:
    directory = harness.server.dispatcher.cluster.directory
    loop = asyncio.get_running_loop()
    end = loop.time() + 15
    while await directory.get(worker_id) is None:
        assert loop.time() < end, f"{worker_id} never reached the cluster directory"
        await asyncio.sleep(0.02)


async def test_a_dispatch_created_on_one_node_reaches_a_worker_on_another(
    redis_proc: RedisProcess, make_harness: Any
) -> None:
    a, b = await cluster_of(make_harness, redis_proc, 2)
    worker = await b.worker(agent_name="helper")
    await published(b, worker.id)
    dispatch = await a.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="helper", room="cross-node")
    )
    (assignment,) = await worker.wait_assignments(1)
    assert assignment.job.dispatch_id == dispatch.id and assignment.job.room.name == "cross-node"
    for node in (a, b):
        (listed,) = await node.api.agent_dispatch.list_dispatch("cross-node")
        assert [j.id for j in listed.state.jobs] == [assignment.job.id]
        assert listed.state.jobs[0].state.worker_id == worker.id


async def test_the_least_loaded_worker_of_the_cluster_gets_the_job(
    redis_proc: RedisProcess, make_harness: Any
) -> None:
    a, b = await cluster_of(make_harness, redis_proc, 2)
    busy = await a.worker(agent_name="helper", load=0.6)
    idle = await b.worker(agent_name="helper", load=0.1)
    await published(a, busy.id)
    await published(b, idle.id)
    await a.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="helper", room="r1"))
    await idle.wait_assignments(1)
    assert busy.received.offers == []


async def test_a_job_queued_on_a_node_without_workers_moves_to_a_worker_that_registers_elsewhere(
    redis_proc: RedisProcess, make_harness: Any
) -> None:
    a, b = await cluster_of(make_harness, redis_proc, 2, dispatch_deadline=20.0)
    await a.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="late", room="r"))
    worker = await b.worker(agent_name="late")
    (assignment,) = await worker.wait_assignments(1)
    assert assignment.job.room.name == "r"


async def test_deleting_a_dispatch_through_one_node_terminates_the_job_on_another(
    redis_proc: RedisProcess, make_harness: Any
) -> None:
    a, b = await cluster_of(make_harness, redis_proc, 2)
    worker = await b.worker(agent_name="helper")
    await published(b, worker.id)
    dispatch = await a.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="helper", room="r")
    )
    (assignment,) = await worker.wait_assignments(1)
    await a.api.agent_dispatch.delete_dispatch(dispatch.id, "r")
    await worker.wait_termination(assignment.job.id)


async def test_a_job_ends_success_through_any_node(redis_proc: RedisProcess, make_harness: Any) -> None:
    a, b = await cluster_of(make_harness, redis_proc, 2)
    worker = await b.worker(agent_name="helper", job_duration=0.05)
    await published(b, worker.id)
    await a.api.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="helper", room="r"))
    (assignment,) = await worker.wait_assignments(1)
    await b.wait_job_status(assignment.job.id, JS_SUCCESS)
    (listed,) = await a.api.agent_dispatch.list_dispatch("r")
    assert listed.state.jobs[0].state.status == JS_SUCCESS


async def test_concurrent_dispatches_through_three_nodes_are_each_assigned_once(
    redis_proc: RedisProcess, make_harness: Any
) -> None:
    nodes = await cluster_of(make_harness, redis_proc, 3, dispatch_deadline=20.0)
    workers = [await node.worker(agent_name="many") for node in nodes]
    for node, w in zip(nodes, workers, strict=True):
        await published(node, w.id)
    creates = [
        nodes[i % 3].api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="many", room=f"room-{i}")
        )
        for i in range(24)  # three workers hold 10 jobs each before their projection is full
    ]
    await asyncio.gather(*creates)
    await nodes[0].wait_for(
        lambda: sum(len(w.received.assignments) for w in workers) >= 24, timeout=30, what="24 assignments"
    )
    assigned = [a.job.id for w in workers for a in w.received.assignments]
    assert len(assigned) == len(set(assigned)) == 24
    assert all(w.received.assignments for w in workers), "the burst spread over the cluster"
