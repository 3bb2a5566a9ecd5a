"""Warm processes where the next job needs one: a fresh worker is FULL until it can start a job warm, and a
worker at max_jobs keeps its idle process for the job it takes next."""

from __future__ import annotations

from typing import Any

from livekit import api
from livekit.protocol import agent
from worker_agents import gate_path

from agentdispatch.server import DispatchServer
from conftest import dispatch, wait_record, wait_until

WS_FULL = agent.WorkerStatus.WS_FULL
WS_AVAILABLE = agent.WorkerStatus.WS_AVAILABLE


async def test_a_fresh_worker_is_full_until_its_first_process_is_warm(
    start_worker: Any, server: DispatchServer, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    gate = gate_path()
    gate.unlink(missing_ok=True)
    try:
        worker = await start_worker(
            agent_name="fresh",
            entrypoint_fnc="worker_agents:entry_record",
            prewarm_fnc="worker_agents:prewarm_gated",
            initialize_process_timeout=60,
        )
        session = server.registry.get(worker.id)
        await wait_until(lambda: session.status == WS_FULL, 10, "the server to see the worker FULL")
        assert worker.info()["full_because"] == "starting job processes"
        assert worker.pool.idle_count == 0
        gate.touch()
        await wait_until(lambda: session.status == WS_AVAILABLE, 20, "AVAILABLE once a process is warm")
        idle = set(worker.pool.idle_pids())
        assert idle
        out = out_file("fresh")
        await dispatch(lkapi, "room-fresh", "fresh", out=out)
        assert (await wait_record(out))["pid"] in idle  # the first job started warm
    finally:
        gate.unlink(missing_ok=True)


async def test_a_worker_at_max_jobs_keeps_a_warm_process_for_its_next_job(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    worker = await start_worker(
        agent_name="cap1",
        entrypoint_fnc="worker_agents:entry_wait",
        max_jobs=1,
        num_idle_processes=1,
        ready=1,
    )
    out = out_file("cap1")
    await dispatch(lkapi, "room-cap1", "cap1", out=out)
    running = await wait_record(out)
    await wait_until(
        lambda: worker.slots.full and worker.pool.idle_count == 1, 20, "a warm process at max_jobs"
    )
    assert worker.refusal() == "at max_jobs"
    warm = worker.pool.idle_pids()[0]
    assert warm != running["pid"]
    assert worker.pool.target == 1
