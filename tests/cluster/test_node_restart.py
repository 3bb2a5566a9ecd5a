"""A single node restarts (SIGTERM or SIGKILL). On Redis: rooms, dispatches and jobs are still there, the
running job stays with its worker after it reconnects and sends migrate_job, and a queued dispatch runs.
In memory: the new process adopts the running job the worker reports (MigrateJobRequest.jobs).

Real `agentdispatch server --redis` processes on the same port, one after the other, and a real
redis-server; workers are SimWorkers over real WebSockets; the API client is livekit-api.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.serverproc import ServerProcess, ServerProcessSettings
from agentdispatch.testing.services import RedisProcess
from agentdispatch.testing.simworker import SimWorker, SimWorkerOptions
from agentdispatch.testing.waiting import eventually as poll_async

JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll an async check; API and connection errors (a node restarting) count as "not yet"."""
    return await poll_async(check, timeout, what, (api.TwirpError, aiohttp.ClientError, OSError))


def start_node(port: int, redis: RedisProcess) -> ServerProcess:
    settings = ServerProcessSettings(
        port=port,
        extra_args=("--redis", redis.url, "--dispatch-deadline", "90", "--reconnect-grace", "60"),
    )
    node = ServerProcess(settings)
    node.start()
    return node


def stop_node(node: ServerProcess, sig: int) -> None:
    if sig == signal.SIGKILL:
        os.kill(node.pid, signal.SIGKILL)
    node.stop()


async def jobs_of(lk: api.LiveKitAPI, room: str) -> list[agent.Job]:
    return [j for d in await lk.agent_dispatch.list_dispatch(room) for j in d.state.jobs]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_restarted_node_on_redis_keeps_rooms_dispatches_and_the_running_job(
    redis_proc: RedisProcess, sig: int
) -> None:
    first = start_node(0, redis_proc)
    port = first.port
    http = aiohttp.ClientSession()
    lk = api.LiveKitAPI(first.url, "devkey", "secret", session=http, failover=False)
    workers: list[SimWorker] = []
    second: ServerProcess | None = None
    try:
        w1 = SimWorker(SimWorkerOptions(url=first.url, agent_name="caller"), http)
        workers.append(w1)
        await w1.connect()
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="caller", room="call")
        )
        await eventually(lambda: _true(w1.received.assignments), what="the job assigned to w1")
        job_id = w1.received.assignments[0].job.id
        queued = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="later", room="waiting")
        )

        stop_node(first, sig)
        second = start_node(port, redis_proc)

        rooms = await eventually(lambda: lk.room.list_rooms(api.ListRoomsRequest()), what="ListRooms")
        assert {"call", "waiting"} <= {r.name for r in rooms.rooms}
        (kept,) = await eventually(lambda: jobs_of(lk, "call"), what="ListDispatch")
        assert kept.id == job_id and kept.state.status == JS_RUNNING

        # the worker comes back (new connection, new worker id) and reports the job it still runs
        w1b = SimWorker(SimWorkerOptions(url=second.url, agent_name="caller"), http)
        workers.append(w1b)
        await w1b.connect()
        await w1b.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[job_id])))
        await eventually(
            lambda: _job_with(lk, "call", lambda j: j.state.worker_id == w1b.id), what="job kept by w1b"
        )
        assert w1b.received.terminations == [], "the running job was not cut"
        await w1b.finish(job_id, JS_SUCCESS)
        await eventually(
            lambda: _job_with(lk, "call", lambda j: j.state.status == JS_SUCCESS), what="success"
        )

        # the dispatch that was only queued when the node went down runs once a worker comes
        w2 = SimWorker(SimWorkerOptions(url=second.url, agent_name="later"), http)
        workers.append(w2)
        await w2.connect()
        await eventually(lambda: _true(w2.received.assignments), timeout=45, what="the queued job to run")
        assert w2.received.assignments[0].job.dispatch_id == queued.id
    finally:
        for w in workers:
            await w.aclose()
        await http.close()
        if second is not None:
            second.stop()
        first.stop()


async def _true(value: object) -> bool:
    return bool(value)


async def _job_with(lk: api.LiveKitAPI, room: str, pred: Callable[[agent.Job], bool]) -> bool:
    return any(pred(j) for j in await jobs_of(lk, room))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_restarted_memory_node_adopts_the_running_job_its_worker_reports(
    sig: int,
) -> None:
    """Memory store: the state is gone with the process, but the worker's MigrateJobRequest.jobs carries
    the running job, and the new process adopts it instead of terminating it (no call cut)."""
    first = ServerProcess(ServerProcessSettings(extra_args=("--reconnect-grace", "60")))
    first.start()
    port = first.port
    http = aiohttp.ClientSession()
    lk = api.LiveKitAPI(first.url, "devkey", "secret", session=http, failover=False)
    workers: list[SimWorker] = []
    second: ServerProcess | None = None
    try:
        w1 = SimWorker(SimWorkerOptions(url=first.url, agent_name="caller"), http)
        workers.append(w1)
        await w1.connect()
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="caller", room="call")
        )
        await eventually(lambda: _true(w1.received.assignments), what="the job assigned to w1")
        running = w1.received.assignments[0].job

        stop_node(first, sig)
        second = ServerProcess(ServerProcessSettings(port=port, extra_args=("--reconnect-grace", "60")))
        second.start()

        w1b = SimWorker(SimWorkerOptions(url=second.url, agent_name="caller"), http)
        workers.append(w1b)
        await w1b.connect()
        migrate = agent.MigrateJobRequest(job_ids=[running.id], jobs=[running])
        await w1b.send(agent.WorkerMessage(migrate_job=migrate))
        await eventually(
            lambda: _job_with(lk, "call", lambda j: j.id == running.id and j.state.worker_id == w1b.id),
            what="the job adopted by the new process",
        )
        assert w1b.received.terminations == [], "the running job was not cut"
        await w1b.finish(running.id, JS_SUCCESS)
        await eventually(
            lambda: _job_with(lk, "call", lambda j: j.state.status == JS_SUCCESS), what="success"
        )
    finally:
        for w in workers:
            await w.aclose()
        await http.close()
        if second is not None:
            second.stop()
        first.stop()
