"""Hostile or broken workers against a real server process: one that never answers offers, one that
stops reading its socket, others trying to take a job over during its worker's reconnect grace, and
a shutdown with participants connected. Shapes of an outside tester's reports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hostile import join_token, list_dispatches, logged_server, wait_until
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.simworker import SimWorker, SimWorkerOptions

JS = agent.JobStatus


async def _dispatch_all(url: str, rooms: list[str], agent_name: str, metadata: str = "") -> None:
    lk = api.LiveKitAPI(url, "devkey", "secret")
    try:
        await asyncio.gather(
            *(
                asyncio.wait_for(  # bounds a hang only; the assertion is that every call returns
                    lk.agent_dispatch.create_dispatch(
                        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
                    ),
                    60,
                )
                for room in rooms
            )
        )
    finally:
        await lk.aclose()


async def _worker_of(url: str, room: str) -> tuple[str, str]:
    [d] = await list_dispatches(url, room)
    [job] = d["state"]["jobs"]  # type: ignore[index]
    return str(job["state"].get("worker_id", "")), str(job["state"].get("status", ""))


def _reporting(w: SimWorker) -> None:
    """Like a real worker: a status report after each new job (the server then trusts its load again)."""

    def on_assignment(_: agent.JobAssignment) -> None:
        asyncio.get_running_loop().create_task(w.report(0.05 * len(w.received.assignments)))

    w.on_assignment = on_assignment


async def test_a_silent_worker_does_not_win_every_selection(tmp_path: Path) -> None:
    """Before: next to a healthy worker, 16 of 16 dispatches went to the silent one first."""
    with logged_server(tmp_path, "--offer-timeout", "2") as server:
        silent = SimWorker(SimWorkerOptions(url=server.url, agent_name="s", policy="ignore"))
        healthy = SimWorker(SimWorkerOptions(url=server.url, agent_name="s"))
        await silent.connect()
        await healthy.connect()
        _reporting(healthy)
        try:
            rooms = [f"silent-{i}" for i in range(16)]
            await _dispatch_all(server.url, rooms, "s")

            async def all_on_healthy() -> bool:
                return all([(await _worker_of(server.url, r)) == (healthy.id, "JS_RUNNING") for r in rooms])

            await wait_until(all_on_healthy, 60, "16 jobs running on the healthy worker")
            first_offers_to_silent = len(silent.received.offers)
            print(f"offers to the silent worker: {first_offers_to_silent}; jobs on the healthy one: 16")
            # on probation each open offer weighs 0.5 more: a worker that never answered holds at most two
            assert first_offers_to_silent <= 2, first_offers_to_silent
            assert len(healthy.received.assignments) == 16
            assert "offer not answered in time" in server.log()
        finally:
            await silent.aclose()
            await healthy.aclose()


async def test_a_worker_that_stops_reading_cannot_stall_the_api(tmp_path: Path) -> None:
    """Before: with a worker whose receive buffer was full, 5 of 20 CreateDispatch calls hung."""
    args = ("--worker-outbox-bytes", str(1024 * 1024), "--worker-send-timeout", "2", "--offer-timeout", "2")
    with logged_server(tmp_path, *args) as server:
        stuck = SimWorker(SimWorkerOptions(url=server.url, agent_name="st"))
        await stuck.connect()
        await _dispatch_all(server.url, ["warm-up"], "st")  # it answers once: trusted with many offers
        await stuck.next_event("assignment", 30)
        transport = stuck.ws._response.connection.transport  # type: ignore[union-attr]
        transport.pause_reading()  # from here on it reads nothing; its socket buffers fill up
        healthy = SimWorker(SimWorkerOptions(url=server.url, agent_name="st"))
        await healthy.connect()
        _reporting(healthy)
        try:
            rooms = [f"stuck-{i}" for i in range(20)]
            started = asyncio.get_running_loop().time()
            await _dispatch_all(server.url, rooms, "st", metadata="p" * 400_000)  # every call answers
            took = asyncio.get_running_loop().time() - started
            print(f"20 CreateDispatch calls next to a stuck worker answered in {took:.2f} s")

            async def all_on_healthy() -> bool:
                return all([(await _worker_of(server.url, r))[0] == healthy.id for r in rooms])

            await wait_until(all_on_healthy, 90, "20 jobs on the healthy worker")
            assert f"disconnecting worker worker_id={healthy.id}" not in server.log()
        finally:
            await healthy.aclose()
            await stuck.aclose()


async def test_migrate_job_is_accepted_only_from_the_jobs_own_worker(tmp_path: Path) -> None:
    """Before: any worker with an agent grant could take a job over during its reconnect grace."""
    keys = tmp_path / "keys.yaml"
    keys.write_text("devkey: secret\nother: othersecret\n")
    with logged_server(tmp_path, "--keys-file", str(keys), "--reconnect-grace", "60") as server:
        owner = SimWorker(SimWorkerOptions(url=server.url, agent_name="a"))
        await owner.connect()
        await _dispatch_all(server.url, ["held"], "a")
        job_id = (await owner.next_event("assignment", 30)).assignment.job.id
        first_owner_id = owner.id

        async def try_migrate(opts: SimWorkerOptions, connected_owner: bool) -> list[str]:
            w = SimWorker(opts)
            await w.connect()
            await w.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[job_id])))
            try:
                msg = await w.next_event("termination", 10)
                return [msg.termination.job_id]
            except TimeoutError:
                return []
            finally:
                await w.aclose()

        # while the owner is connected nobody may take it, not even the same key and agent name
        same = SimWorkerOptions(url=server.url, agent_name="a")
        assert await try_migrate(same, True) == [job_id]
        await owner.aclose()  # the owner's connection is lost: the reconnect grace runs

        async def lost() -> bool:
            return "worker disconnected" in server.log()

        await wait_until(lost, 30, "owner disconnect seen")
        other_key = SimWorkerOptions(
            url=server.url, api_key="other", api_secret="othersecret", agent_name="a"
        )
        other_name = SimWorkerOptions(url=server.url, agent_name="b")
        other_type = SimWorkerOptions(url=server.url, agent_name="a", job_type=agent.JobType.JT_PUBLISHER)
        for intruder in (other_key, other_name, other_type):
            assert await try_migrate(intruder, False) == [job_id], intruder
            assert await _worker_of(server.url, "held") == (first_owner_id, "JS_RUNNING")  # untouched
        # the same API key and worker key (the owner reconnecting) keeps it
        back = SimWorker(SimWorkerOptions(url=server.url, agent_name="a"))
        await back.connect()
        await back.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=[job_id])))

        async def kept() -> bool:
            return await _worker_of(server.url, "held") == (back.id, "JS_RUNNING")

        await wait_until(kept, 30, "job kept by the reconnected owner")
        await back.finish(job_id, JS.JS_SUCCESS)

        async def done() -> bool:
            return (await _worker_of(server.url, "held"))[1] == "JS_SUCCESS"

        await wait_until(done, 30, "JS_SUCCESS from the owner")
        assert back.received.terminations == []
        await back.aclose()
        assert server.log().count("migrate refused") == 4


async def test_shutdown_with_participants_tells_them_and_ends_quickly(tmp_path: Path) -> None:
    """Before: ~47 s with participants connected, jobs 'restarting', no room_closed, no close frame."""
    with logged_server(tmp_path, "--shutdown-timeout", "3", "--reconnect-grace", "0.5") as server:
        worker = SimWorker(SimWorkerOptions(url=server.url))
        await worker.connect()
        http = aiohttp.ClientSession()
        clients = []
        for i in range(20):
            token = join_token(f"room-{i % 5}", f"user-{i}")
            ws = await http.ws_connect(f"{server.ws_url}/presence?access_token={token}")
            assert (await ws.receive_json(timeout=10))["type"] == "joined"
            clients.append(ws)

        async def five_running() -> bool:
            return len(worker.received.assignments) >= 5

        await wait_until(five_running, 30, "a job per room")
        seconds = await asyncio.to_thread(server.terminate, 30.0)

        async def ending(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[str], int | None]:
            kinds = []
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    kinds.append(json.loads(msg.data)["type"])
            return kinds, ws.close_code

        endings = await asyncio.gather(*(ending(ws) for ws in clients))
        await http.close()
        await worker.aclose()
        for kinds, code in endings:
            assert "room_closed" in kinds, kinds
            assert code is not None  # a close frame, not a dropped socket
        print(f"shutdown with 20 presence clients and 5 running jobs: {seconds:.2f} s")
        assert seconds < 15, seconds  # shutdown budget 3 s (+1 s HTTP runner); before: ~47 s
        log = server.log()
        assert "job restarting" not in log and "restart" not in log.split("shutting down")[-1]
        assert worker.received.assignments and worker.close_code == aiohttp.WSCloseCode.GOING_AWAY


async def test_a_worker_whose_outbox_overflows_is_cut_off_and_its_offers_go_elsewhere(harness: Any) -> None:
    """In process, so the frames can be forced: a worker that reads nothing while frames pile up."""
    stuck = await harness.worker(agent_name="ov")
    session = harness.server.registry.get(stuck.id)
    stuck.ws._response.connection.transport.pause_reading()
    big = agent.ServerMessage(
        availability=agent.AvailabilityRequest(job=agent.Job(id="AJ_filler", metadata="f" * 1_000_000))
    )
    posted = 0
    while session.post(big) and posted < 200:  # the writer can hand over only what the kernel takes
        posted += 1
        await asyncio.sleep(0)
    assert session.close_reason.startswith("outbound queue over"), session.close_reason
    await harness.wait_for(lambda: harness.server.registry.get(stuck.id) is None, what="stuck worker removed")
    other = await harness.worker(agent_name="ov")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="ov", room="ov")
    )
    [assignment] = await other.wait_assignments(1)
    assert assignment.job.room.name == "ov"
    stuck.ws._response.connection.transport.resume_reading()  # let the client see its close quickly


@pytest.mark.parametrize("server_config", [{"worker_send_timeout": 0.5}])
async def test_a_socket_that_takes_no_frame_within_the_send_timeout_is_cut_off(harness: Any) -> None:
    stuck = await harness.worker(agent_name="slow")
    session = harness.server.registry.get(stuck.id)
    stuck.ws._response.connection.transport.pause_reading()
    big = agent.ServerMessage(
        availability=agent.AvailabilityRequest(job=agent.Job(id="AJ_filler", metadata="f" * 400_000))
    )
    for _ in range(40):  # ~16 MB: more than the kernel buffers take, less than 4x the 8 MiB budget
        if not session.post(big):
            break
        await asyncio.sleep(0.01)
    await harness.wait_for(lambda: bool(session.close_reason), timeout=30, what="send timeout")
    assert "socket took no frame" in session.close_reason or "outbound queue over" in session.close_reason
    stuck.ws._response.connection.transport.resume_reading()  # let the client see its close quickly
