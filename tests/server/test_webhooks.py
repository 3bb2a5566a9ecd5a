"""Webhooks: a real HTTP receiver verifies each request with livekit-api's WebhookReceiver, unchanged."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import psutil
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import agent, webhook
from prometheus_client.parser import text_string_to_metric_families

from agentdispatch.testing.serverproc import free_port

CALL_EVENTS = [
    "room_started",
    "agent_job_pending",
    "agent_job_assigned",
    "agent_job_running",
    "participant_joined",
    "participant_left",
    "agent_job_ended",
    "room_finished",
]


class Receiver:
    """An aiohttp app on loopback that verifies every webhook and records what it verified."""

    def __init__(self, harness: Any, port: int = 0, key: str = "devkey", secret: str = "secret") -> None:
        self.harness = harness
        self.port = port
        self.verifier = api.WebhookReceiver(api.TokenVerifier(key, secret))
        self.events: list[webhook.WebhookEvent] = []
        self.rejected: list[str] = []
        self.content_types: set[str] = set()
        self.bodies: list[str] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = self.verifier.receive(body, request.headers.get("Authorization", ""))
        except Exception as exc:  # noqa: BLE001  WebhookReceiver raises bare Exception on a bad hash
            self.rejected.append(repr(exc))
            self.harness.bus.notify()
            return web.Response(status=401)
        self.content_types.add(request.content_type)
        self.bodies.append(body)
        self.events.append(event)
        self.harness.bus.notify()
        return web.Response(text="ok")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def names(self, room: str) -> list[str]:
        return [e.event for e in self.events if e.room.name == room]

    async def wait_event(self, room: str, name: str) -> webhook.WebhookEvent:
        await self.harness.wait_for(lambda: name in self.names(room), timeout=15.0, what=f"webhook {name}")
        return next(e for e in self.events if e.room.name == room and e.event == name)


@pytest.fixture
async def receivers() -> Any:
    started: list[Receiver] = []
    yield started
    for r in started:
        await r.stop()


async def test_every_event_of_one_call_arrives_verified_and_in_order(
    make_harness: Any, receivers: Any, make_token: Any
) -> None:
    port = free_port()
    harness = await make_harness(webhook_urls=(f"http://127.0.0.1:{port}/hook",))
    receiver = Receiver(harness, port=port)
    receivers.append(receiver)
    await receiver.start()
    worker = await harness.worker(agent_name="hooked")

    await harness.api.room.create_room(
        api.CreateRoomRequest(name="call-1", agents=[api.RoomAgentDispatch(agent_name="hooked")])
    )
    [assignment] = await worker.wait_assignments(1)
    await receiver.wait_event("call-1", "agent_job_running")
    user = await harness.presence(make_token(room_join=True, room="call-1", identity="caller"))
    await receiver.wait_event("call-1", "participant_joined")
    await user.aclose()
    await receiver.wait_event("call-1", "participant_left")
    await worker.finish(assignment.job.id, agent.JobStatus.JS_SUCCESS)
    await receiver.wait_event("call-1", "agent_job_ended")
    await harness.api.room.delete_room(api.DeleteRoomRequest(room="call-1"))
    await receiver.wait_event("call-1", "room_finished")

    assert receiver.rejected == []
    assert receiver.names("call-1") == CALL_EVENTS
    by_name = {e.event: e for e in receiver.events}
    assert by_name["participant_joined"].participant.identity == "caller"
    ended = by_name["agent_job_ended"].job
    assert (ended.id, ended.agent_name, ended.state.status) == (
        assignment.job.id,
        "hooked",
        agent.JobStatus.JS_SUCCESS,
    )
    assert by_name["agent_job_assigned"].job.state.worker_id == worker.id
    assert len({e.id for e in receiver.events}) == len(receiver.events)  # every event has its own id
    assert receiver.content_types == {"application/webhook+json"}
    assert all('"createdAt"' in b for b in receiver.bodies)  # JSON names as LiveKit's protojson writes them


async def test_a_receiver_that_is_down_gets_the_events_after_it_comes_back(
    make_harness: Any, receivers: Any
) -> None:
    port = free_port()
    harness = await make_harness(webhook_urls=(f"http://127.0.0.1:{port}/hook",))
    await harness.api.room.create_room(api.CreateRoomRequest(name="late", agents=[]))

    async def failures() -> float:
        async with harness.http.get(harness.server.url + "/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "agentdispatch_webhook_failures_total":
                    return float(s.value)
        return 0.0

    loop = asyncio.get_running_loop()
    end = loop.time() + 15
    while await failures() < 2:  # the receiver is down: attempts fail and are counted
        assert loop.time() < end, "no failed delivery was counted"
        await asyncio.sleep(0.05)

    receiver = Receiver(harness, port=port)
    receivers.append(receiver)
    await receiver.start()
    await receiver.wait_event("late", "room_started")
    await harness.api.room.delete_room(api.DeleteRoomRequest(room="late"))
    await receiver.wait_event("late", "room_finished")
    names = receiver.names("late")
    assert names[0] == "room_started" and names[-1] == "room_finished"
    assert receiver.rejected == []


async def test_a_hanging_receiver_never_delays_dispatch(make_harness: Any, receivers: Any) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        harness = await make_harness(webhook_urls=(f"http://127.0.0.1:{port}/hook",))
        w = await harness.worker(agent_name="busy")
        for i in range(5):
            await harness.api.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="busy", room=f"h-{i}")
            )
        assert len(await w.wait_assignments(5)) == 5  # while every webhook POST hangs
        sender = harness.server.ops.webhooks
        await harness.wait_for(lambda: sender.statistics().queued > 0, what="events queued in the child")
        assert sender.statistics().delivered == 0
    finally:
        release.set()
        await runner.cleanup()


async def test_only_the_chosen_events_are_sent(make_harness: Any, receivers: Any) -> None:
    port = free_port()
    harness = await make_harness(
        webhook_urls=(f"http://127.0.0.1:{port}/hook",), webhook_events=("agent_job_ended", "room_finished")
    )
    receiver = Receiver(harness, port=port)
    receivers.append(receiver)
    await receiver.start()
    w = await harness.worker(agent_name="filtered")
    await harness.api.room.create_room(
        api.CreateRoomRequest(name="f-1", agents=[api.RoomAgentDispatch(agent_name="filtered")])
    )
    [a] = await w.wait_assignments(1)
    await w.finish(a.job.id, agent.JobStatus.JS_SUCCESS)
    await receiver.wait_event("f-1", "agent_job_ended")
    await harness.api.room.delete_room(api.DeleteRoomRequest(room="f-1"))
    await receiver.wait_event("f-1", "room_finished")
    assert receiver.names("f-1") == ["agent_job_ended", "room_finished"]


def test_an_unknown_webhook_event_name_is_refused() -> None:
    from agentdispatch.protocol.errors import ConfigError
    from agentdispatch.server.webhooks import WebhookOptions

    with pytest.raises(ConfigError, match="unknown webhook events"):
        WebhookOptions(("http://127.0.0.1:1/hook",), "devkey", "secret", events=frozenset({"job_done"}))


async def test_delivery_runs_in_a_child_process_that_ends_with_the_server(receivers: Any) -> None:
    from agentdispatch.server import DispatchServer, ServerConfig

    server = DispatchServer(ServerConfig(port=0, webhook_urls=("http://127.0.0.1:1/hook",)))
    await server.start()
    sender = server.ops.webhooks
    pid = sender.pid
    assert pid is not None and pid != os.getpid()
    child = psutil.Process(pid)
    for _ in range(200):  # a freshly spawned child shows its command line once it has exec'd
        if "agentdispatch.server.webhook_child" in " ".join(child.cmdline()):
            break
        await asyncio.sleep(0.05)
    assert "agentdispatch.server.webhook_child" in " ".join(child.cmdline())
    await server.aclose()
    assert not psutil.pid_exists(pid) or child.status() == psutil.STATUS_ZOMBIE


async def test_a_killed_delivery_process_is_replaced_and_delivery_goes_on(
    make_harness: Any, receivers: Any
) -> None:
    port = free_port()
    harness = await make_harness(webhook_urls=(f"http://127.0.0.1:{port}/hook",))
    receiver = Receiver(harness, port=port)
    receivers.append(receiver)
    await receiver.start()
    await harness.api.room.create_room(api.CreateRoomRequest(name="before"))
    await receiver.wait_event("before", "room_started")
    sender = harness.server.ops.webhooks
    first = sender.pid
    os.kill(first, signal.SIGKILL)
    await harness.wait_for(lambda: sender.pid not in (None, first), timeout=15, what="a new delivery process")
    await harness.api.room.create_room(api.CreateRoomRequest(name="after"))
    await receiver.wait_event("after", "room_started")
    assert sender.restarts == 1 and not psutil.pid_exists(first)
    assert any(r.getMessage().startswith("webhook delivery process exited") for r in _records(harness))


def _records(harness: Any) -> list[Any]:
    import logging

    handlers = [h for h in logging.getLogger("agentdispatch").handlers if hasattr(h, "records")]
    return [r for h in handlers for r in h.records]
