"""Real job processes: prewarmed pool, userdata, init timeout + backoff, crash, kill escalation, memory."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.worker.ipc import ChildConfig
from agentdispatch.worker.proc_pool import BackoffPolicy, ProcPool
from agentdispatch.worker.refs import FunctionRef
from agentdispatch.worker.supervised import ProcSettings, SupervisedProc
from conftest import (
    FAST,
    assert_no_leaks,
    dispatch,
    listed_status,
    pid_gone,
    wait_record,
    wait_until,
)

JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS
JS_FAILED = agent.JobStatus.JS_FAILED


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_three_prewarmed_processes_ready_before_first_job_and_userdata_reaches_the_job(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    worker = await start_worker(
        agent_name="warm",
        entrypoint_fnc="worker_agents:entry_record",
        prewarm_fnc="worker_agents:prewarm_userdata",
        num_idle_processes=3,
        ready=3,
    )
    idle = worker.pool.idle_pids()
    assert len(set(idle)) == 3 and all(psutil.pid_exists(p) for p in idle)
    assert worker.info()["jobs"] == []  # no job has been offered yet

    out = out_file("job")
    await dispatch(lkapi, "room-warm", "warm", out=out)
    rec = await wait_record(out)
    assert rec["pid"] in idle  # the job ran in one of the processes prewarmed before it existed
    assert rec["userdata"] == {"prewarmed_in": rec["pid"], "model": "loaded"}
    assert rec["worker_id"] == worker.id and rec["room"] == "room-warm"
    job = await listed_status(lkapi, "room-warm", JS_SUCCESS)
    assert job.state.worker_id == worker.id
    await wait_until(lambda: pid_gone(rec["pid"]), 5, "the job process to exit after its job")


async def test_crashing_job_is_failed_with_its_error_in_list_dispatch(
    start_worker: Any, lkapi: api.LiveKitAPI
) -> None:
    await start_worker(agent_name="crash", entrypoint_fnc="worker_agents:entry_crash", ready=1)
    await dispatch(lkapi, "room-crash", "crash")
    job = await listed_status(lkapi, "room-crash", JS_FAILED)
    assert job.state.error.startswith("RuntimeError: kaboom: the agent crashed on purpose")
    assert "entry_crash" in job.state.error  # the traceback tail names the failing function


async def test_job_ignoring_shutdown_is_sigkilled_after_timeout_and_its_pid_is_gone(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agentdispatch")
    await start_worker(
        agent_name="stubborn",
        entrypoint_fnc="worker_agents:entry_ignore_shutdown",
        shutdown_process_timeout=0.5,
    )
    out = out_file("stubborn")
    dispatch_id = await dispatch(lkapi, "room-stubborn", "stubborn", out=out)
    rec = await wait_record(out)
    pid = rec["pid"]
    await listed_status(lkapi, "room-stubborn", JS_RUNNING)
    await lkapi.agent_dispatch.delete_dispatch(dispatch_id, "room-stubborn")  # -> JobTermination
    await wait_until(lambda: pid_gone(pid), 10, "the stubborn job process to die")
    steps = messages(caplog, "agentdispatch.worker.proc")
    asked = next(i for i, m in enumerate(steps) if "asking job process to shut down" in m)
    term = next(i for i, m in enumerate(steps) if "sending SIGTERM" in m)
    kill = next(i for i, m in enumerate(steps) if "sending SIGKILL" in m)
    assert asked < term < kill
    assert "0.5s after the shutdown request" in steps[term]


async def test_memory_limit_over_a_grandchild_stops_gracefully_then_by_force(
    start_worker: Any, lkapi: api.LiveKitAPI, jobs: Any, out_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A jump from ~0 to 300 MB in one step (warn 100, limit 200): the warning is still logged, once,
    before the limit line; the job ends JS_FAILED interrupted."""
    caplog.set_level(logging.INFO, "agentdispatch")
    await start_worker(
        agent_name="hog",
        entrypoint_fnc="worker_agents:entry_memory_hog",
        job_memory_warn_mb=100,
        job_memory_limit_mb=200,
        shutdown_process_timeout=0.5,
        ready=1,
    )
    out = out_file("hog")
    await dispatch(lkapi, "room-hog", "hog", out=out, delay=1.5, mb=300)
    rec = await wait_record(out)
    job_pid, child_pid = rec["pid"], rec["child"]
    tree = await wait_until(
        lambda: len(psutil.Process(job_pid).children(recursive=True)) >= 2, 5, "grandchild"
    )
    assert tree
    pids = [job_pid] + [p.pid for p in psutil.Process(job_pid).children(recursive=True)]
    assert child_pid in pids
    job = await listed_status(lkapi, "room-hog", JS_FAILED, timeout=15)
    assert job.state.error.startswith("interrupted (memory limit 200 MB: ")
    assert job.state.error.endswith(" MB; killed after shutdown timeout)")  # it ignored the request
    await wait_until(lambda: all(pid_gone(p) for p in pids), 5, "job, child and grandchild to be gone")
    steps = messages(caplog, "agentdispatch.worker.proc")
    warned = [i for i, m in enumerate(steps) if "over job_memory_warn_mb=100" in m]
    limit = [i for i, m in enumerate(steps) if "over job_memory_limit_mb (memory limit 200 MB: " in m]
    assert len(warned) == 1 and len(limit) == 1 and warned[0] < limit[0], steps
    asked = next(i for i, m in enumerate(steps) if "shut down (interrupted (memory limit 200 MB" in m)
    term = next(i for i, m in enumerate(steps) if "sending SIGTERM" in m)
    kill = next(i for i, m in enumerate(steps) if "sending SIGKILL to its process tree" in m)
    assert limit[0] < asked < term < kill


def _settings(prewarm: str | None, init_timeout: float) -> ProcSettings:
    child = ChildConfig(
        entrypoint=FunctionRef("entry_noop", module="worker_agents"),
        prewarm=FunctionRef(prewarm, module="worker_agents") if prewarm else None,
        log_level="INFO",
        sys_path=tuple(sys.path),
        parent_pid=os.getpid(),
    )
    return ProcSettings(child=child, initialize_timeout=init_timeout, shutdown_timeout=0.5, term_grace=0.5)


async def test_init_timeout_kills_the_process_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings("prewarm_hang", init_timeout=0.3)
    spawned: list[SupervisedProc] = []

    def spawn() -> SupervisedProc:
        proc = SupervisedProc(settings)
        spawned.append(proc)
        return proc

    pool = ProcPool(spawn, target=1, backoff=BackoffPolicy(base=0.2, cap=5.0))
    pool.start()
    try:
        await wait_until(lambda: len(pool.stats.backoff_delays) >= 3, 15, "three backoffs")
    finally:
        await pool.aclose()
    # each failure doubles the wait before the next attempt: no tight respawn loop
    assert pool.stats.backoff_delays[:3] == [0.2, 0.4, 0.8]
    assert pool.stats.spawned <= pool.stats.init_failures + 1
    pids = [p.pid for p in spawned if p.pid is not None]
    assert len(pids) >= 3 and all(pid_gone(pid) for pid in pids)
    assert (
        sum(
            "did not initialize within 0.3s, killing it" in m
            for m in messages(caplog, "agentdispatch.worker.proc")
        )
        >= 3
    )
    await assert_no_leaks()


async def test_an_accepted_job_whose_process_cannot_start_is_handed_back_at_once(
    start_worker: Any, lkapi: api.LiveKitAPI, jobs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No warm pool (num_idle_processes=0), so the worker accepts; the process's prewarm fails: the job
    is reported JS_FAILED interrupted at once (never JS_RUNNING), and the worker reports FULL with why."""
    caplog.set_level(logging.INFO, "agentdispatch")
    worker = await start_worker(
        agent_name="broken",
        entrypoint_fnc="worker_agents:entry_noop",
        prewarm_fnc="worker_agents:prewarm_hang",
        initialize_process_timeout=0.3,
        num_idle_processes=0,
    )
    await dispatch(lkapi, "room-broken", "broken")
    job = await listed_status(lkapi, "room-broken", JS_FAILED)
    assert job.state.error == (
        "interrupted (job process could not start: prewarm did not finish within 0.3s)"
    )
    assert worker.offers.accepted == 1
    assert agent.JobStatus.JS_RUNNING not in worker_statuses(caplog, job.id)
    why = worker.info()["full_because"]
    assert worker.info()["status"] == "full"
    assert why == "job processes cannot start: prewarm did not finish within 0.3s"
    logged = messages(caplog, "agentdispatch.worker")
    assert any(
        "job processes cannot start (prewarm did not finish within 0.3s): reporting FULL" in m for m in logged
    )


def worker_statuses(caplog: pytest.LogCaptureFixture, job_id: str) -> set[int]:
    """Statuses the worker logged for a job ("job running" is logged when it reports JS_RUNNING)."""
    return {
        agent.JobStatus.JS_RUNNING
        for r in caplog.records
        if r.getMessage() == "job running" and getattr(r, "job_id", None) == job_id
    }


async def test_a_worker_whose_prewarm_always_fails_is_full_and_jobs_go_to_a_healthy_peer(
    start_worker: Any, lkapi: api.LiveKitAPI, server: Any, jobs: Any
) -> None:
    broken = await start_worker(
        agent_name="pair", entrypoint_fnc="worker_agents:entry_noop", prewarm_fnc="worker_agents:prewarm_fail"
    )
    await wait_until(lambda: broken.pool.failing, 10, "the broken worker's first prewarm failure")
    assert broken.info()["full_because"] == (
        "job processes cannot start: prewarm failed: RuntimeError: model file missing"
    )
    session = server.registry.get(broken.id)
    await wait_until(lambda: session.status == agent.WorkerStatus.WS_FULL, 5, "the server to see FULL")
    healthy = await start_worker(agent_name="pair", entrypoint_fnc="worker_agents:entry_noop", ready=1)
    rooms = [f"pair-{i}" for i in range(3)]
    for room in rooms:
        await dispatch(lkapi, room, "pair")
    for room in rooms:
        job = await listed_status(lkapi, room, agent.JobStatus.JS_SUCCESS, timeout=20)
        assert job.state.worker_id == healthy.id
    assert broken.offers.accepted == 0  # never held a job it could not run
    assert not any(j.state.worker_id == broken.id for j in jobs.latest.values())


async def test_idle_pool_shrinks_when_load_is_high(start_worker: Any) -> None:
    level = {"value": 0.0}
    worker = await start_worker(
        agent_name="shrink",
        entrypoint_fnc="worker_agents:entry_noop",
        num_idle_processes=3,
        load_fnc=lambda: level["value"],
        load_threshold=0.7,
        ready=3,
    )
    level["value"] = 0.9
    await wait_until(
        lambda: worker.pool.target == 1 and worker.pool.idle_count == 1, 10, "pool to shrink to 1"
    )
    level["value"] = 0.1
    await asyncio.wait_for(worker.pool.wait_ready(3), 10)
    assert FAST.load_interval < 1  # the shrink above was driven by the load loop, not by a job


async def test_job_logs_reach_the_worker_with_job_id_and_pid(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "test.agent")
    await start_worker(agent_name="logs", entrypoint_fnc="worker_agents:entry_record", ready=1)
    out = out_file("logs")
    await dispatch(lkapi, "room-logs", "logs", out=out)
    rec = await wait_record(out)
    record = await wait_until(
        lambda: next((r for r in caplog.records if r.name == "test.agent"), None), 5, "log"
    )
    assert record.getMessage() == "recording job"
    assert (record.job_id, record.pid, record.marker) == (rec["job_id"], rec["pid"], "from-the-job")  # type: ignore[attr-defined]


async def test_shutdown_callbacks_run_with_the_reason(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    await start_worker(agent_name="cb", entrypoint_fnc="worker_agents:entry_with_callbacks")
    out = out_file("cb")
    dispatch_id = await dispatch(lkapi, "room-cb", "cb", out=out)
    await wait_record(out)
    await listed_status(lkapi, "room-cb", JS_RUNNING)
    await lkapi.agent_dispatch.delete_dispatch(dispatch_id, "room-cb")
    path = Path(out + ".callbacks")
    await wait_until(path.exists, 10, "the callbacks to run")
    assert json.loads(path.read_text()) == ["sync:terminated by the server", "async"]  # noqa: ASYNC240


async def test_participant_workers_get_one_job_per_participant(
    start_worker: Any, lkapi: api.LiveKitAPI, server: Any, out_file: Any
) -> None:
    import aiohttp

    from agentdispatch import ServerType

    await start_worker(
        agent_name="per-user", entrypoint_fnc="worker_agents:entry_record", server_type=ServerType.PARTICIPANT
    )
    out = out_file("participant")
    await dispatch(lkapi, "room-people", "per-user", out=out)
    grants = api.VideoGrants(room_join=True, room="room-people")
    token = api.AccessToken("devkey", "secret").with_identity("bob").with_grants(grants).to_jwt()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.ws_url}/presence?access_token={token}"),
    ):
        rec = await wait_record(out)
    assert (rec["participant"], rec["job_type"]) == ("bob", agent.JobType.JT_PARTICIPANT)


async def test_processes_a_job_leaves_behind_are_stopped_when_it_ends(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    await start_worker(agent_name="leaver", entrypoint_fnc="worker_agents:entry_leave_child", ready=1)
    out = out_file("leaver")
    await dispatch(lkapi, "room-leaver", "leaver", out=out)
    rec = await wait_record(out, "child")
    await listed_status(lkapi, "room-leaver", JS_SUCCESS)
    await wait_until(lambda: pid_gone(rec["child"]) and pid_gone(rec["pid"]), 5, "the job and what it left")


async def test_spawn_context_runs_jobs_with_prewarm_too(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    await start_worker(
        agent_name="spawned",
        entrypoint_fnc="worker_agents:entry_record",
        prewarm_fnc="worker_agents:prewarm_userdata",
        multiprocessing_context="spawn",
        ready=1,
    )
    out = out_file("spawned")
    await dispatch(lkapi, "room-spawned", "spawned", out=out)
    rec = await wait_record(out)
    assert rec["userdata"] == {"prewarmed_in": rec["pid"], "model": "loaded"}
    await listed_status(lkapi, "room-spawned", JS_SUCCESS)
