"""Offers: exact max_jobs under a burst, request_fnc timeout, idempotent answers, load_fnc failures."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import pytest
from livekit.protocol import agent, models

from agentdispatch import JobRequest
from agentdispatch.protocol import WorkerError
from agentdispatch.util import TaskSet
from agentdispatch.worker.offers import SlotTable, decide
from agentdispatch.worker.runtime import Worker
from conftest import JobWatch, wait_until

JS_FAILED = agent.JobStatus.JS_FAILED
JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS
WS_FULL = agent.WorkerStatus.WS_FULL
WS_AVAILABLE = agent.WorkerStatus.WS_AVAILABLE
NOT_ACCEPTED = "simulated job was not accepted"


async def simulate(worker: Worker, room: str) -> None:
    """Ask the server for a job offer, once the worker can take one (a fresh worker is FULL until warm)."""
    await wait_until(lambda: worker.pool.warm, 20, "a warm job process")
    req = agent.SimulateJobRequest(room=models.Room(name=room))
    assert await worker.conn.send(agent.WorkerMessage(simulate_job=req))


def jobs_in(watch: JobWatch, prefix: str) -> list[agent.Job]:
    return [j for j in watch.latest.values() if j.room.name.startswith(prefix)]


# -- units ---------------------------------------------------------------------------------------------
def test_slot_table_is_an_exact_cap() -> None:
    slots = SlotTable(2)
    assert slots.reserve("a") and slots.reserve("b") and not slots.reserve("c")
    assert slots.reserve("a")  # already held: idempotent
    assert slots.release("a") and not slots.release("a")
    assert slots.reserve("c") and slots.full and slots.used == 2
    unlimited = SlotTable(None)
    assert all(unlimited.reserve(str(i)) for i in range(1000)) and not unlimited.full


async def test_a_second_answer_is_an_error() -> None:
    req = JobRequest(agent.Job(id="AJ_1"))
    await req.accept(identity="bot", name="Bot", metadata="m", attributes={"k": "v"})
    with pytest.raises(WorkerError, match="cannot reject job AJ_1: it was already accepted"):
        await req.reject()
    with pytest.raises(WorkerError, match="cannot accept job AJ_1: it was already accepted"):
        await req.accept()
    answer = req._answer.result()
    proto = answer.to_proto("AJ_1")
    assert (proto.available, proto.participant_identity, proto.participant_name) == (True, "bot", "Bot")
    assert dict(proto.participant_attributes) == {"k": "v"}


async def test_default_identity_and_reject_terminate() -> None:
    req = JobRequest(agent.Job(id="AJ_2"))
    await req.accept()
    assert req._answer.result().accept is not None
    assert req._answer.result().accept.identity == "agent-AJ_2"  # type: ignore[union-attr]
    rej = JobRequest(agent.Job(id="AJ_3"))
    await rej.reject(terminate=True)
    assert rej._answer.result().to_proto("AJ_3").terminate


async def test_request_fnc_that_hangs_is_declined_after_the_timeout_and_cannot_answer_late() -> None:
    tasks = TaskSet("test")
    started = asyncio.Event()
    seen: list[JobRequest] = []

    async def hang(req: JobRequest) -> None:
        seen.append(req)
        started.set()
        await asyncio.sleep(3600)

    answer = await decide(JobRequest(agent.Job(id="AJ_h")), hang, 0.05, tasks)
    assert not answer.available and answer.why == "request_fnc timed out after 0.05s"
    assert started.is_set() and len(tasks) == 0  # the hung request_fnc was cancelled, not leaked
    with pytest.raises(WorkerError, match="already declined"):
        await seen[0].accept()


async def test_request_fnc_raising_or_not_answering_declines(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("test")

    async def boom(req: JobRequest) -> None:
        raise KeyError("oops")

    async def silent(req: JobRequest) -> None:
        return None

    assert (await decide(JobRequest(agent.Job(id="AJ_b")), boom, 1.0, tasks)).why == "request_fnc raised"
    assert (
        await decide(JobRequest(agent.Job(id="AJ_s")), silent, 1.0, tasks)
    ).why == "request_fnc did not answer"
    assert any("request_fnc raised KeyError('oops')" in r.getMessage() for r in caplog.records)
    await tasks.aclose()


# -- with the real server ----------------------------------------------------------------------------------
async def test_fifty_simultaneous_offers_with_max_jobs_five_accept_exactly_five(
    start_worker: Any, jobs: JobWatch
) -> None:
    worker = await start_worker(
        agent_name="burst",
        entrypoint_fnc="worker_agents:entry_wait",
        max_jobs=5,
        num_idle_processes=2,
        ready=2,  # a fresh worker is FULL until a process is warm
    )
    await asyncio.gather(*(simulate(worker, f"burst-{i}") for i in range(50)))
    await wait_until(
        lambda: worker.offers.accepted + sum(worker.offers.declined.values()) == 50, 10, "50 answers"
    )
    assert worker.offers.accepted == 5
    assert worker.offers.declined == {"at max_jobs": 45}
    await wait_until(lambda: len(jobs.with_status(JS_RUNNING)) == 5, 15, "5 running jobs")
    await wait_until(lambda: len(jobs.with_status(JS_FAILED)) == 45, 5, "45 refused jobs")
    assert all(j.state.error == NOT_ACCEPTED for j in jobs.with_status(JS_FAILED))
    await wait_until(lambda: len(worker.jobs) == 5, 15, "the worker to take the 5 assignments")
    assert worker.slots.used == 5
    await wait_until(
        lambda: [j["status"] for j in worker.info()["jobs"]] == ["JS_RUNNING"] * 5, 15, "5 started"
    )
    assert len({j["pid"] for j in worker.info()["jobs"]}) == 5  # one process per job
    assert worker.status == WS_FULL


async def test_request_fnc_that_hangs_is_declined_and_its_slot_released(
    start_worker: Any, jobs: JobWatch
) -> None:
    async def request_fnc(req: JobRequest) -> None:
        if req.room.name.startswith("hang"):
            await asyncio.sleep(3600)
        await req.accept()

    worker = await start_worker(
        agent_name="hang",
        entrypoint_fnc="worker_agents:entry_wait",
        request_fnc=request_fnc,
        request_timeout=0.2,
        max_jobs=1,
    )
    await simulate(worker, "hang-1")
    await wait_until(lambda: worker.slots.used == 1, 5, "the slot to be reserved while request_fnc runs")
    assert worker.status == WS_FULL  # the reserved slot is the only one
    await wait_until(lambda: any(j.state.status == JS_FAILED for j in jobs_in(jobs, "hang-1")), 5, "decline")
    assert worker.offers.declined == {"request_fnc timed out after 0.2s": 1}
    assert worker.slots.used == 0 and worker.status == WS_AVAILABLE
    await simulate(worker, "ok-1")  # the released slot takes the next job
    await wait_until(
        lambda: any(j.state.status == JS_RUNNING for j in jobs_in(jobs, "ok-1")), 10, "ok-1 running"
    )
    assert worker.offers.accepted == 1


def _hang_sync() -> float:
    time.sleep(3600)
    return 0.0


async def _hang_async() -> float:
    await asyncio.sleep(3600)
    return 0.0


def _raise() -> float:
    raise RuntimeError("sensor offline")


BAD_LOADS: dict[str, Any] = {
    "nan": lambda: math.nan,
    "inf": lambda: math.inf,
    "negative": lambda: -1.0,
    "above_one": lambda: 2.0,
    "raises": _raise,
    "hangs_sync": _hang_sync,
    "hangs_async": _hang_async,
}


@pytest.mark.parametrize("kind", list(BAD_LOADS))
async def test_bad_load_fnc_keeps_the_worker_up_with_status_and_answers_agreeing(
    kind: str, start_worker: Any, server: Any, jobs: JobWatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentdispatch.worker.load")
    worker = await start_worker(
        agent_name=f"load-{kind}",
        entrypoint_fnc="worker_agents:entry_noop",
        load_fnc=BAD_LOADS[kind],
        load_threshold=0.7,
        load_timeout=0.1,
        ready=1,
    )
    await wait_until(lambda: worker.load.samples >= 5, 10, "five load samples")
    full = kind != "negative"  # -1 is sanitised to 0 (idle); everything else counts as full
    assert worker.load.value == (1.0 if full else 0.0)
    assert worker.status == (WS_FULL if full else WS_AVAILABLE)
    session = server.registry.get(worker.id)
    await wait_until(lambda: session.status == worker.status, 5, "the server to see the same status")

    await simulate(worker, f"probe-{kind}")
    expected = JS_FAILED if full else JS_SUCCESS
    await wait_until(
        lambda: [j.state.status for j in jobs_in(jobs, "probe-")] == [expected], 10, "the answer"
    )
    assert (worker.offers.accepted, sum(worker.offers.declined.values())) == ((0, 1) if full else (1, 0))

    samples = worker.load.samples
    await wait_until(lambda: worker.load.samples >= samples + 3, 5, "the load loop to keep running")
    assert worker.conn.connected
    logged = [r for r in caplog.records if r.name == "agentdispatch.worker.load"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
