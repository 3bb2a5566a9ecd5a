"""The echo example end to end: server, worker, job process, presence client for the user."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol import agent

from agentdispatch.server import DispatchServer
from conftest import JobWatch, listed_status, pid_gone, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "echo_agent.py"


def user_token(room: str, identity: str, name: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return (
        api.AccessToken("devkey", "secret")
        .with_identity(identity)
        .with_name(name)
        .with_grants(grants)
        .to_jwt()
    )


async def test_echo_agent_greets_and_echoes_over_presence(
    start_worker: Any, server: DispatchServer, lkapi: api.LiveKitAPI, jobs: JobWatch
) -> None:
    worker = await start_worker(
        agent_name="echo", entrypoint_fnc=f"{EXAMPLE}:entrypoint", prewarm_fnc=f"{EXAMPLE}:prewarm"
    )
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="echo", room="echo-room")
    )
    job = await listed_status(lkapi, "echo-room", agent.JobStatus.JS_RUNNING)

    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        url = f"{server.ws_url}/presence?access_token={user_token('echo-room', 'alice', 'Alice')}"
        async with http.ws_connect(url) as ws:

            async def next_data() -> dict[str, Any]:
                while True:
                    frame = await ws.receive(timeout=10)
                    event = json.loads(frame.data)
                    events.append(event)
                    if event["type"] == "data":
                        return event

            greeting = await next_data()
            assert greeting["from"] == f"agent-{job.id}" and greeting["topic"] == "chat"
            assert greeting["payload"] == "Hello Alice, I am an echo agent: send me anything."
            for text in ("ping", "héllo wörld"):
                await ws.send_str(json.dumps({"type": "data", "payload": text, "topic": "chat"}))
                reply = await next_data()
                assert (reply["payload"], reply["from"]) == (f"echo: {text}", f"agent-{job.id}")
    assert events[0]["type"] == "joined"
    seen = [p["identity"] for p in events[0]["participants"]]
    seen += [e["participant"]["identity"] for e in events if e["type"] == "participant_joined"]
    assert seen == [f"agent-{job.id}"]  # the agent is in the room as a participant

    pid = worker.info()["jobs"][0]["pid"]
    await lkapi.room.delete_room(api.DeleteRoomRequest(room="echo-room"))  # the job is terminated, then ends
    await wait_until(lambda: len(worker.jobs) == 0, 10, "the job to end")
    await wait_until(lambda: pid_gone(pid), 5, "the job process to exit")
    assert jobs.latest[job.id].state.status == agent.JobStatus.JS_CANCELLED
