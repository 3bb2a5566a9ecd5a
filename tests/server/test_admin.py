"""The admin API: who may read it, what it says about workers and jobs, and its live event stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.server import DispatchServer, ServerConfig


async def get(harness: Any, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with harness.http.get(harness.server.url + path, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_admin_api_needs_a_room_admin_token_or_the_admin_token(
    make_harness: Any, make_token: Any
) -> None:
    harness = await make_harness(admin_token="s3cret-admin")
    assert (await get(harness, "/admin/workers"))[0] == 401
    assert (await get(harness, "/admin/workers", "not-a-jwt"))[0] == 401
    assert (await get(harness, "/admin/workers", make_token(room_admin=True, secret="wrong")))[0] == 401
    status, body = await get(harness, "/admin/workers", make_token(room_join=True, room="x", identity="u"))
    assert status == 403 and "roomAdmin" in body["msg"]
    assert (await get(harness, "/admin/workers", make_token(room_admin=True)))[0] == 200
    assert (await get(harness, "/admin/workers", "s3cret-admin"))[0] == 200
    async with harness.http.get(harness.server.url + "/admin/status?access_token=s3cret-admin") as resp:
        assert resp.status == 200  # the query form, for EventSource


@pytest.mark.parametrize("server_config", [{"admin_open_on_loopback": True}])
async def test_dev_mode_opens_the_admin_api_to_loopback(harness: Any) -> None:
    status, body = await get(harness, "/admin/workers")
    assert (status, body) == (200, {"workers": []})


async def test_workers_show_id_agent_load_and_jobs(harness: Any, make_token: Any) -> None:
    w = await harness.worker(agent_name="listed", load=0.25)
    await w.report(load=0.25)
    await w.sync()
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="listed", room="a")
    )
    await w.wait_assignments(1)
    await w.sync()
    token = make_token(room_admin=True)

    async def listed() -> dict[str, Any]:
        _, body = await get(harness, "/admin/workers", token)
        return body["workers"][0] if body["workers"] else {}

    row = await listed()
    assert row["worker_id"] == w.id
    assert (row["agent_name"], row["state"], row["load"], row["active_jobs"]) == (
        "listed",
        "available",
        0.25,
        1,
    )
    assert row["node_id"] == harness.server.node_id


@pytest.mark.parametrize("server_config", [{"dispatch_deadline": 30.0}])
async def test_jobs_show_waiting_per_agent_and_recent_failures_with_reason(
    harness: Any, make_token: Any
) -> None:
    token = make_token(room_admin=True)
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="late", room="w")
    )
    _, jobs = await get(harness, "/admin/jobs", token)
    assert jobs["waiting"]["late"]["count"] == 1
    [waiting] = jobs["waiting_jobs"]
    assert (waiting["agent_name"], waiting["room"]) == ("late", "w")

    w = await harness.worker(agent_name="crashy")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(
            agent_name="crashy", room="c", restart_policy=api.JobRestartPolicy.JRP_NEVER
        )
    )
    [a] = await w.wait_assignments(1)
    await w.finish(a.job.id, agent.JobStatus.JS_FAILED, error="entrypoint raised KeyError: 'llm'")
    await w.sync()
    _, status = await get(harness, "/admin/status", token)
    [failure] = status["recent_failures"]
    assert (failure["job_id"], failure["status"], failure["reason"]) == (a.job.id, "failed", "job_error")
    assert failure["error"] == "entrypoint raised KeyError: 'llm'"
    assert status["capacity"]["workers"] == 1
    assert status["waiting"]["late"]["count"] == 1


async def read_sse(resp: aiohttp.ClientResponse, out: list[tuple[str, dict[str, Any]]], bus: Any) -> None:
    kind = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            out.append((kind, json.loads(line.removeprefix("data: "))))
            bus.notify()


async def test_the_event_stream_starts_with_a_snapshot_then_follows_the_lifecycle(
    harness: Any, make_token: Any
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    headers = {"Authorization": f"Bearer {make_token(room_admin=True)}"}
    async with harness.http.get(harness.server.url + "/admin/events", headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        reader = asyncio.get_running_loop().create_task(read_sse(resp, events, harness.bus))
        try:
            await harness.wait_for(lambda: events, what="the snapshot")
            assert events[0][0] == "snapshot" and events[0][1]["workers"] == []
            w = await harness.worker(agent_name="streamed")
            await harness.wait_for(
                lambda: any(k == "worker" and e["kind"] == "registered" for k, e in events), what="registered"
            )
            await harness.api.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="streamed", room="s")
            )
            [a] = await w.wait_assignments(1)
            await w.finish(a.job.id, agent.JobStatus.JS_SUCCESS)
            await harness.wait_for(
                lambda: any(k == "job" and e["kind"] == "ended" for k, e in events), what="job ended"
            )
        finally:
            reader.cancel()
    kinds = [e["kind"] for k, e in events if k == "job" and e["job_id"] == a.job.id]
    assert kinds[0] == "created" and kinds[-1] == "ended"
    assert kinds.index("offered") < kinds.index("assigned") < kinds.index("running") < kinds.index("ended")
    [registered] = [e for k, e in events if k == "worker" and e["kind"] == "registered"]
    assert registered["worker"]["worker_id"] == w.id
    running = next(e for k, e in events if k == "job" and e["kind"] == "running")
    assert running["latency_ms"] is not None and running["latency_ms"] >= 0


async def test_the_server_stops_promptly_with_an_event_stream_open(make_token: Any) -> None:
    server = DispatchServer(ServerConfig(port=0))
    await server.start()
    headers = {"Authorization": f"Bearer {make_token(room_admin=True)}"}
    closed = False
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + "/admin/events", headers=headers) as resp,
        ):
            assert (await resp.content.readline()).startswith(b"event: snapshot")
            await asyncio.wait_for(server.aclose(), 10)  # would wait on the stream without on_shutdown
            closed = True
    finally:
        if not closed:
            await server.aclose()
