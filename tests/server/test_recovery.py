"""Nothing lost: failed and lost jobs restart (bounded), policies are honoured, retries are idempotent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent, agent_dispatch

from agentdispatch.server import DispatchServer
from agentdispatch.testing.simworker import SimWorker, SimWorkerOptions

JS = agent.JobStatus
MakeWorker = Callable[..., Awaitable[SimWorker]]


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Short timers for the shared harness (tests/conftest.py)."""
    return {"offer_timeout": 0.5, "dispatch_deadline": 3, "reconnect_grace": 0.3, "max_restarts": 2}


@pytest.fixture
async def make_worker(server: DispatchServer) -> AsyncIterator[MakeWorker]:
    workers: list[SimWorker] = []

    async def make(**kw: object) -> SimWorker:
        w = SimWorker(SimWorkerOptions(url=server.url, agent_name="rec", **kw))  # type: ignore[arg-type]
        await w.connect()
        workers.append(w)
        return w

    yield make
    for w in workers:
        await w.aclose()


async def _join(
    server: DispatchServer, room: str, identity: str = "caller"
) -> aiohttp.ClientWebSocketResponse:
    """An end user in the room (a presence connection), so a job there has someone to serve."""
    token = (
        api.AccessToken("devkey", "secret")
        .with_identity(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"{server.ws_url}/presence?access_token={token}")
    joined = await ws.receive_json(timeout=5)
    assert joined["type"] == "joined"
    ws._test_session = session  # type: ignore[attr-defined]  # closed with the socket below
    return ws


async def _leave(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.close()
    await ws._test_session.close()  # type: ignore[attr-defined]


async def _job(lkapi: api.LiveKitAPI, room: str) -> agent.Job:
    (dispatch,) = await lkapi.agent_dispatch.list_dispatch(room)
    (job,) = dispatch.state.jobs
    return job


async def _wait_status(lkapi: api.LiveKitAPI, room: str, status: int, timeout: float = 5) -> agent.Job:
    end = asyncio.get_running_loop().time() + timeout
    while True:
        job = await _job(lkapi, room)
        if job.state.status == status or asyncio.get_running_loop().time() > end:
            return job
        await asyncio.sleep(0.02)


async def test_failed_job_restarts_on_another_worker(
    server: DispatchServer, lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    a = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="r1"))
    first = (await a.next_event("assignment")).assignment.job
    user = await _join(server, "r1")  # someone to serve: a crash is worth a restart
    b = await make_worker()
    await a.finish(first.id, JS.JS_FAILED, "boom")
    offer = await b.next_event("availability")
    assert offer.availability.job.id == first.id
    assert offer.availability.resuming is True
    await b.next_event("assignment")
    job = await _wait_status(lkapi, "r1", JS.JS_RUNNING)
    assert job.state.worker_id == b.id
    assert job.state.error == "restart 1/2 after: boom"
    await _leave(user)


async def test_crash_with_nobody_in_the_room_is_not_restarted(
    lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    a = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="empty"))
    first = (await a.next_event("assignment")).assignment.job
    b = await make_worker()
    await a.finish(first.id, JS.JS_FAILED, "exited with code 255")
    job = await _wait_status(lkapi, "empty", JS.JS_FAILED)
    assert job.state.error == "exited with code 255 (not restarted: no participant in the room to serve)"
    await asyncio.sleep(0.3)
    assert b.received.offers == []


async def test_crash_after_the_caller_hung_up_is_not_restarted(
    server: DispatchServer, lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    a = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="rec", room="hung-up")
    )
    first = (await a.next_event("assignment")).assignment.job
    user = await _join(server, "hung-up")
    await _leave(user)
    for _ in range(500):  # the server has seen the caller leave
        if not (await server.rooms.audience("hung-up")).humans_now:
            break
        await asyncio.sleep(0.01)
    await a.finish(first.id, JS.JS_FAILED, "exited with code 255")
    job = await _wait_status(lkapi, "hung-up", JS.JS_FAILED)
    assert job.state.error == "exited with code 255 (not restarted: nobody left in the room to serve)"
    assert len(a.received.offers) == 1


async def test_interrupted_job_is_restarted_even_before_anyone_joined(
    lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    a = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="cut"))
    first = (await a.next_event("assignment")).assignment.job
    b = await make_worker()
    await a.finish(first.id, JS.JS_FAILED, "interrupted (drain timeout 3s)")
    offer = await b.next_event("availability")
    assert (offer.availability.job.id, offer.availability.resuming) == (first.id, True)
    await b.next_event("assignment")
    job = await _wait_status(lkapi, "cut", JS.JS_RUNNING)
    assert job.state.error == "restart 1/2 after: interrupted (drain timeout 3s)"


async def test_crash_loop_ends_failed_after_the_bound(
    server: DispatchServer, lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    w = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="loop"))
    first = (await w.next_event("assignment")).assignment.job
    user = await _join(server, "loop")  # a caller is there the whole time: every crash is restarted

    def fail(assignment: agent.JobAssignment) -> None:
        asyncio.get_running_loop().create_task(w.finish(assignment.job.id, JS.JS_FAILED, "segfault"))

    w.on_assignment = fail
    await w.finish(first.id, JS.JS_FAILED, "segfault")
    job = await _wait_status(lkapi, "loop", JS.JS_FAILED)
    assert job.state.status == JS.JS_FAILED
    assert job.state.error == "segfault (after 2 restarts)"
    assert len(w.received.assignments) == 3  # first run + 2 restarts, then no more
    await asyncio.sleep(0.3)
    assert len(w.received.offers) == 3
    await _leave(user)


async def test_jrp_never_failure_is_final(lkapi: api.LiveKitAPI, make_worker: MakeWorker) -> None:
    a = await make_worker()
    b = await make_worker()
    req = api.CreateAgentDispatchRequest(
        agent_name="rec", room="never", restart_policy=agent_dispatch.JobRestartPolicy.JRP_NEVER
    )
    await lkapi.agent_dispatch.create_dispatch(req)
    await asyncio.sleep(0.2)
    owner, other = (a, b) if a.received.assignments else (b, a)
    job_id = owner.received.assignments[0].job.id
    await owner.finish(job_id, JS.JS_FAILED, "bad input")
    job = await _wait_status(lkapi, "never", JS.JS_FAILED)
    assert job.state.error == "bad input"
    assert other.received.offers == []


async def test_success_is_never_restarted(lkapi: api.LiveKitAPI, make_worker: MakeWorker) -> None:
    w = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="ok"))
    job_id = (await w.next_event("assignment")).assignment.job.id
    await w.finish(job_id, JS.JS_SUCCESS)
    job = await _wait_status(lkapi, "ok", JS.JS_SUCCESS)
    assert job.state.ended_at > 0
    await asyncio.sleep(0.3)
    assert len(w.received.offers) == 1


async def test_lost_worker_job_resumes_elsewhere(
    server: DispatchServer, lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    a = await make_worker()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="lost"))
    job_id = (await a.next_event("assignment")).assignment.job.id
    b = await make_worker()
    await a.aclose()  # the worker disappears mid-job
    offer = await b.next_event("availability", timeout=0.3 + 0.5 + 2)
    assert offer.availability.job.id == job_id and offer.availability.resuming
    job = await _wait_status(lkapi, "lost", JS.JS_RUNNING)
    assert job.state.worker_id == b.id
    assert "worker lost" in job.state.error


async def test_late_accept_after_reoffer_is_terminated(
    lkapi: api.LiveKitAPI, make_worker: MakeWorker
) -> None:
    slow = await make_worker(policy="ignore")
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="rec", room="late"))
    job_id = (await slow.next_event("availability")).availability.job.id
    fast = await make_worker()  # registers: the queued-after-timeout job goes here
    await fast.next_event("assignment", timeout=3)
    await slow.answer(job_id, True)  # too late
    term = await slow.next_event("termination")
    assert term.termination.job_id == job_id
    assert slow.received.assignments == []
    job = await _job(lkapi, "late")
    assert job.state.worker_id == fast.id


async def _post_dispatch(http: aiohttp.ClientSession, url: str, key: str, room: str) -> dict[str, object]:
    token = (
        api.AccessToken("devkey", "secret").with_grants(api.VideoGrants(room_admin=True, room=room)).to_jwt()
    )
    async with http.post(
        url + "/twirp/livekit.AgentDispatchService/CreateDispatch",
        json={"agent_name": "rec", "room": room},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
    ) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, object] = await resp.json()
        return body


async def test_same_request_id_creates_one_dispatch(server: DispatchServer, lkapi: api.LiveKitAPI) -> None:
    async with aiohttp.ClientSession() as http:
        first = await _post_dispatch(http, server.url, "k-1", "idem")
        again = await _post_dispatch(http, server.url, "k-1", "idem")
        both = await asyncio.gather(*[_post_dispatch(http, server.url, "k-2", "idem") for _ in range(5)])
        other = await _post_dispatch(http, server.url, "k-3", "idem")
    assert first["id"] == again["id"]
    assert len({d["id"] for d in both}) == 1
    assert other["id"] not in (first["id"], both[0]["id"])
    dispatches = await lkapi.agent_dispatch.list_dispatch("idem")
    assert len(dispatches) == 3
