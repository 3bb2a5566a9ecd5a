"""Frames handled where they are parsed (server/ws_frames.py): status reports and pings of a registered
worker skip the connection task, every other frame goes through it, and the worker's order is kept."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.protocol import Encoding


def masked_frame(payload: bytes) -> bytes:
    """One binary WebSocket frame as a client sends it (masked)."""
    n = len(payload)
    head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def one_write(ws: Any, *messages: agent.WorkerMessage) -> None:
    """Send several frames in a single socket write, so the server parses them in one go."""
    ws._writer.transport.write(b"".join(masked_frame(m.SerializeToString()) for m in messages))


async def test_status_reports_and_pings_are_handled_inline(harness: Any) -> None:
    w = await harness.worker(agent_name="inline")
    session = harness.server.registry.get(w.id)
    before = session.ws.frames.handled_inline
    for load in (0.1, 0.2, 0.3):
        await w.report(load)
    await w.sync()  # a ping; its pong comes back
    assert session.load.reported == pytest.approx(0.3)  # float32 on the wire
    assert session.ws.frames.handled_inline >= before + 4
    assert any(p.last_timestamp for p in w.received.pongs)


async def test_json_worker_status_inline_keeps_json_replies(harness: Any) -> None:
    w = await harness.worker(agent_name="inline-json", encoding=Encoding.JSON)
    await w.report(0.4)
    await w.sync()
    session = harness.server.registry.get(w.id)
    assert session.load.reported == pytest.approx(0.4)
    assert session.ws.frames.handled_inline >= 2


async def test_status_after_accept_in_one_segment_is_applied_after_it(harness: Any) -> None:
    """Accept (handled by the task) and a status report (inline-capable) parsed together: the status must
    wait its turn. Applied first, it would leave the accepted job counted as 'assigned since the last
    report' (projected load too high until the next report)."""
    w = await harness.worker(agent_name="order", policy="ignore")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="order", room="inline-order")
    )
    (offer,) = await w.wait_offers(1)
    job_id = offer.job.id
    one_write(
        w.ws,
        agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id=job_id, available=True)),
        agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.25, job_count=1)),
    )
    await w.wait_assignments(1)
    await w.sync()
    session = harness.server.registry.get(w.id)
    assert session.load.reported == 0.25
    assert job_id in session.load.jobs
    assert job_id not in session.load.since_report, "the status report was applied before the accept"


async def test_garbage_after_a_good_frame_still_closes_with_the_reason(harness: Any) -> None:
    w = await harness.worker(agent_name="garbage")
    one_write(
        w.ws,
        agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.5)),
    )
    w.ws._writer.transport.write(masked_frame(b"\xff\xff\xff not protobuf"))
    await harness.wait_for(lambda: w.ws.closed, what="the server closing the connection")
    assert w.ws.close_code == 1008  # policy violation, as for a garbage frame handled by the task
    await harness.wait_for(lambda: harness.server.registry.get(w.id) is None, what="the worker removed")


async def test_a_repeated_report_only_refreshes_its_time(harness: Any) -> None:
    w = await harness.worker(agent_name="repeat")
    await w.report(0.2)
    await w.sync()
    session = harness.server.registry.get(w.id)
    first = session.load.last_status_at
    await w.report(0.2)
    await w.sync()
    assert session.load.last_status_at > first
    assert session.load.reported == pytest.approx(0.2)


async def test_a_report_repeated_after_another_one_went_through_the_task_is_applied(harness: Any) -> None:
    """A (inline), then B queued behind a task-handled frame, then A again: the last A must count."""
    w = await harness.worker(agent_name="repeat-order")
    await w.report(0.1)
    await w.sync()
    one_write(
        w.ws,
        agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id="AJ_unknown", available=False)),
        agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.9)),
    )
    await w.sync()
    session = harness.server.registry.get(w.id)
    assert session.load.reported == pytest.approx(0.9)
    await w.report(0.1)
    await w.sync()
    assert session.load.reported == pytest.approx(0.1), "the repeated report was taken for a heartbeat"


@pytest.mark.parametrize("server_config", [{"status_stale_after": 0.2, "dispatch_deadline": 30.0}])
async def test_a_repeated_report_from_a_stale_worker_pulls_the_waiting_job(harness: Any) -> None:
    w = await harness.worker(agent_name="stale")
    await w.report(0.0)
    await w.sync()
    session = harness.server.registry.get(w.id)
    await harness.wait_for(lambda: not harness.server.registry.is_eligible(session), what="a stale status")
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="stale", room="stale-room")
    )
    await w.sync()
    assert w.received.offers == []  # it waits: the only worker's status is too old
    await w.report(0.0)  # byte for byte the report before
    await w.wait_offers(1)


def _termination(job_id: str) -> agent.ServerMessage:
    return agent.ServerMessage(termination=agent.JobTermination(job_id=job_id))


def _big_offer(job_id: str) -> agent.ServerMessage:
    # over the outbox's small-frame size: it goes through the writer task
    job = agent.Job(id=job_id, metadata="m" * 40_000)
    return agent.ServerMessage(availability=agent.AvailabilityRequest(job=job))


async def test_a_small_frame_to_an_idle_worker_is_written_at_once(harness: Any) -> None:
    w = await harness.worker(agent_name="direct", policy="ignore")
    session = harness.server.registry.get(w.id)
    assert session.post(_termination("AJ_direct"))
    # written in post() itself: nothing queued, no writer task started
    assert (session.queued_bytes, session._writer, session._queue) == (0, None, None)
    msg = await w.next_event("termination")
    assert msg.termination.job_id == "AJ_direct"


async def test_a_small_frame_after_a_queued_one_keeps_its_place(harness: Any) -> None:
    w = await harness.worker(agent_name="direct-order", policy="ignore")
    session = harness.server.registry.get(w.id)
    assert session.post(_big_offer("AJ_first"))
    assert session._writer is not None and session.queued_bytes > 0  # the big frame waits for the task
    assert session.post(_termination("AJ_second"))  # must not overtake it
    assert session.post(_termination("AJ_third"))
    kinds = [(await w.next_message()).WhichOneof("message") for _ in range(3)]
    assert kinds == ["availability", "termination", "termination"]
    assert w.received.offers[0].job.id == "AJ_first"
    assert w.received.terminations == ["AJ_second", "AJ_third"]


async def test_a_worker_that_negotiated_compression_gets_its_frames_through_the_task(harness: Any) -> None:
    """permessage-deflate's context is aiohttp's: with compression on, nothing is written directly."""
    w = await harness.worker(agent_name="deflate", policy="ignore", compress=15)
    session = harness.server.registry.get(w.id)
    assert session.ws.compress, "the server did not accept the client's permessage-deflate offer"
    assert session.post(_termination("AJ_deflated"))
    assert session._writer is not None  # went to the writer task (aiohttp's compressing send)
    assert (await w.next_event("termination")).termination.job_id == "AJ_deflated"
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="deflate", room="deflate-room")
    )
    (offer,) = await w.wait_offers(1)
    assert offer.job.room.name == "deflate-room"
