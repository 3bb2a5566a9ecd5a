"""Drain, HTTP endpoints, reconnection with migrate_job, retry limits, and what is never retried."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent, models

from agentdispatch.protocol import WorkerError
from agentdispatch.server import DispatchServer
from agentdispatch.worker.connection import (
    ConnectionRefused,
    ConnectionSettings,
    WorkerConnection,
    backoff_delay,
)
from conftest import FAST, JobWatch, dispatch, listed_status, pid_gone, read_record, wait_record, wait_until

JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS
JS_FAILED = agent.JobStatus.JS_FAILED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_drain_lets_the_running_job_finish_and_declines_new_offers(
    start_worker: Any, lkapi: api.LiveKitAPI, server: DispatchServer, jobs: JobWatch, out_file: Any
) -> None:
    worker = await start_worker(agent_name="drain", entrypoint_fnc="worker_agents:entry_sleep")
    out = out_file("drain")
    await dispatch(lkapi, "room-drain", "drain", out=out, seconds=1.5)
    rec = await wait_record(out)
    assert rec["state"] == "running"
    await listed_status(lkapi, "room-drain", JS_RUNNING)

    worker.begin_drain()
    session = server.registry.get(worker.id)
    await wait_until(lambda: session.draining, 5, "the server to see the worker draining")
    assert session.status == agent.WorkerStatus.WS_FULL
    req = agent.SimulateJobRequest(room=models.Room(name="late-offer"))
    await worker.conn.send(agent.WorkerMessage(simulate_job=req))
    await wait_until(lambda: worker.offers.declined.get("draining") == 1, 5, "the late offer to be declined")
    assert not worker.test_task.done()  # still waiting for the running job

    await asyncio.wait_for(worker.test_task, 10)  # the worker exits once the job is done
    assert (await wait_record(out, "state"))["state"] == "finished"
    job = await listed_status(
        lkapi, "room-drain", JS_SUCCESS
    )  # final status arrived before the socket closed
    assert job.state.error == ""
    assert worker.offers.accepted == 1
    assert pid_gone(rec["pid"])


async def test_drain_timeout_stops_the_remaining_jobs(
    start_worker: Any, lkapi: api.LiveKitAPI, out_file: Any
) -> None:
    worker = await start_worker(agent_name="drain2", entrypoint_fnc="worker_agents:entry_wait")
    out = out_file("forever")
    await dispatch(lkapi, "room-forever", "drain2", out=out)
    await wait_record(out)
    await listed_status(lkapi, "room-forever", JS_RUNNING)
    await asyncio.wait_for(worker.drain(timeout=0.3), 5)
    await asyncio.wait_for(worker.test_task, 10)
    rec = await wait_record(out, "reason")
    assert rec == {**rec, "state": "stopped", "reason": "interrupted (drain timeout 0.3s)"}
    job = await listed_status(lkapi, "room-forever", JS_FAILED)
    assert job.state.error == "interrupted (drain timeout 0.3s)"


async def test_a_job_cut_short_by_the_drain_timeout_is_failed_interrupted_not_success(
    start_worker: Any, lkapi: api.LiveKitAPI, server: DispatchServer, jobs: JobWatch, out_file: Any
) -> None:
    worker = await start_worker(
        agent_name="drain3",
        entrypoint_fnc="worker_agents:entry_sleep",
        drain_timeout=3.0,
        production=True,
        api_key="devkey",
        api_secret="secret",
    )
    out = out_file("sixty")
    await dispatch(lkapi, "room-sixty", "drain3", out=out, seconds=60)
    rec = await wait_record(out)
    job_id = rec["job_id"]
    await jobs.wait_status(job_id, JS_RUNNING)
    worker.begin_drain()
    await asyncio.wait_for(worker.test_task, 30)
    ended = await jobs.wait_status(job_id, JS_FAILED)  # what the server recorded
    assert ended.state.error == "interrupted (drain timeout 3s)"
    assert JS_SUCCESS not in {j.state.status for j in jobs.latest.values()}
    assert pid_gone(rec["pid"])


async def test_a_dev_stop_reports_running_jobs_interrupted(
    start_worker: Any, lkapi: api.LiveKitAPI, jobs: JobWatch, out_file: Any
) -> None:
    worker = await start_worker(agent_name="devstop", entrypoint_fnc="worker_agents:entry_wait")
    out = out_file("devstop")
    await dispatch(lkapi, "room-devstop", "devstop", out=out)
    rec = await wait_record(out)
    await jobs.wait_status(rec["job_id"], JS_RUNNING)
    worker.stop()  # what Ctrl-C does in dev mode
    await asyncio.wait_for(worker.test_task, 15)
    ended = await jobs.wait_status(rec["job_id"], JS_FAILED)
    assert ended.state.error == "interrupted (worker stopped)"
    assert (await wait_record(out, "reason"))["reason"] == "interrupted (worker stopped)"


async def test_a_job_that_finishes_on_its_own_during_drain_is_a_success(
    start_worker: Any, lkapi: api.LiveKitAPI, jobs: JobWatch, out_file: Any
) -> None:
    worker = await start_worker(
        agent_name="drain4",
        entrypoint_fnc="worker_agents:entry_sleep",
        drain_timeout=30.0,
        production=True,
        api_key="devkey",
        api_secret="secret",
    )
    out = out_file("short")
    await dispatch(lkapi, "room-short", "drain4", out=out, seconds=1.0)
    rec = await wait_record(out)
    worker.begin_drain()
    await asyncio.wait_for(worker.test_task, 30)
    ended = await jobs.wait_status(rec["job_id"], JS_SUCCESS)
    assert ended.state.error == ""


async def test_http_health_is_503_until_registered_then_ok(start_worker: Any, server: DispatchServer) -> None:
    lost = await start_worker(
        agent_name="lost",
        entrypoint_fnc="worker_agents:entry_noop",
        ws_url=f"ws://127.0.0.1:{free_port()}",
        registered=False,
        num_idle_processes=0,
    )
    ok = await start_worker(agent_name="http", entrypoint_fnc="worker_agents:entry_noop", max_jobs=3, ready=1)
    async with aiohttp.ClientSession() as http:
        await wait_until(lambda: lost.http.port != 0, 5, "the HTTP server to listen")
        async with http.get(lost.http.url + "/") as resp:
            assert resp.status == 503
        async with http.get(lost.http.url + "/worker") as resp:
            info = await resp.json()
            assert info["registered"] is False and info["id"] == ""
        async with http.get(ok.http.url + "/") as resp:
            assert (resp.status, await resp.text()) == (200, "OK")
        async with http.get(ok.http.url + "/worker") as resp:
            info = await resp.json()
        assert info["id"] == ok.id and info["agent_name"] == "http" and info["status"] == "available"
        assert info["max_jobs"] == 3 and info["jobs"] == [] and len(info["idle_pids"]) == 1
        assert info["load_threshold"] is None  # dev: no load threshold (inf is not JSON)
        async with http.get(ok.http.url + "/metrics") as resp:
            text = await resp.text()
        assert (
            "agentdispatch_worker_available 1.0" in text and "agentdispatch_worker_idle_processes 1.0" in text
        )


async def test_reconnect_sends_migrate_job_and_the_job_stays_with_the_worker(
    start_worker: Any, lkapi: api.LiveKitAPI, server: DispatchServer, out_file: Any
) -> None:
    worker = await start_worker(agent_name="migrate", entrypoint_fnc="worker_agents:entry_wait")
    out = out_file("migrate")
    await dispatch(lkapi, "room-migrate", "migrate", out=out)
    rec = await wait_record(out)
    first_id = worker.id
    job = await listed_status(lkapi, "room-migrate", JS_RUNNING)
    assert job.state.worker_id == first_id

    await server.registry.get(first_id).ws.close()  # the network drops the worker
    await wait_until(lambda: worker.conn.connected and worker.id != first_id, 10, "re-registration")
    assert worker.conn.registrations == 2
    await wait_until(
        lambda: (
            server.registry.get(worker.id) is not None
            and job.id in server.registry.get(worker.id).active_jobs
        ),
        5,
        "the server to take the migrated job",
    )
    migrated = await listed_status(lkapi, "room-migrate", JS_RUNNING)
    assert migrated.state.worker_id == worker.id  # the same job, same process, now under the new id
    assert psutil_alive(rec["pid"])
    worker.stop()
    await asyncio.wait_for(worker.test_task, 10)
    ended = await listed_status(lkapi, "room-migrate", JS_FAILED)
    assert ended.state.error == "interrupted (worker stopped)"


def psutil_alive(pid: int) -> bool:
    return not pid_gone(pid)


async def test_connection_gives_up_after_max_retry_with_a_clear_error(start_worker: Any) -> None:
    port = free_port()
    worker = await start_worker(
        agent_name="nowhere",
        entrypoint_fnc="worker_agents:entry_noop",
        ws_url=f"ws://127.0.0.1:{port}",
        max_retry=2,
        registered=False,
        num_idle_processes=0,
    )
    with pytest.raises(WorkerError) as info:
        await asyncio.wait_for(worker.test_task, 10)
    message = str(info.value)
    assert f"could not connect to ws://127.0.0.1:{port}/agent after 3 attempts (max_retry=2)" in message
    assert "last error:" in message


async def test_wrong_credentials_are_not_retried(start_worker: Any) -> None:
    worker = await start_worker(
        agent_name="badkey",
        entrypoint_fnc="worker_agents:entry_noop",
        api_secret="wrong",
        registered=False,
        num_idle_processes=0,
        max_retry=50,
    )
    with pytest.raises(ConnectionRefused, match=r"refused the worker \(401\): check api_key/api_secret"):
        await asyncio.wait_for(worker.test_task, 10)


async def test_programming_errors_are_not_retried_as_network_errors(server: DispatchServer) -> None:
    settings = ConnectionSettings(
        url=server.url,
        api_key="devkey",
        api_secret="secret",
        agent_name="bug",
        job_type=0,
        permissions=models.ParticipantPermission(),
        version="test",
        max_retry=5,
        backoff_base=0.01,
    )

    async def buggy(worker_id: str) -> None:
        raise TypeError("a bug in a callback")

    conn = WorkerConnection(settings, buggy, lambda msg: None, lambda: None)
    with pytest.raises(TypeError, match="a bug in a callback"):
        await asyncio.wait_for(conn.run(), 5)
    assert conn.registrations == 1  # no reconnect loop around a bug


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt in range(10):
        ceiling = min(15.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 15.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered: workers do not reconnect in lockstep


async def test_a_job_ending_while_disconnected_is_reported_after_reconnecting(
    start_worker: Any,
    lkapi: api.LiveKitAPI,
    server: DispatchServer,
    out_file: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "agentdispatch.worker")
    slow_reconnect = dataclasses.replace(FAST, reconnect_base=2.0, reconnect_cap=2.0)  # retry after 1-2 s
    worker = await start_worker(
        agent_name="gap", entrypoint_fnc="worker_agents:entry_sleep", tuning=slow_reconnect
    )
    out = out_file("gap")
    await dispatch(lkapi, "room-gap", "gap", out=out, seconds=0.5)
    await wait_record(out)
    first_id = worker.id
    await server.registry.get(first_id).ws.close()
    await wait_until(lambda: read_record(out).get("state") == "finished", 5, "the job to end")
    await wait_until(lambda: len(worker.jobs) == 0, 5, "the job process to exit")
    assert not worker.conn.connected  # the job ended inside the gap
    assert any("kept for the next connection" in r.getMessage() for r in caplog.records)
    await wait_until(lambda: worker.conn.connected, 10, "the reconnection")
    job = await listed_status(lkapi, "room-gap", JS_SUCCESS)  # migrated, then the kept status replayed
    assert job.state.worker_id == worker.id != first_id
