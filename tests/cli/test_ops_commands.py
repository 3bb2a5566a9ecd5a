"""The operator commands, each run as `agentdispatch ...` against a live server process."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.serverproc import ServerProcess, ServerProcessSettings, agentdispatch_command
from agentdispatch.testing.simworker import SimWorker, SimWorkerOptions

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(ServerProcessSettings(extra_args=("--dispatch-deadline", "60"))) as proc:
        yield proc


def env_for(server: ServerProcess, secret: str = "secret") -> dict[str, str]:
    return {
        **os.environ,
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": secret,
    }


async def cli(server: ServerProcess, *args: str, secret: str = "secret") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *agentdispatch_command(), *args, env=env_for(server, secret),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    return proc.returncode or 0, out.decode(), err.decode()


async def ok(server: ServerProcess, *args: str) -> str:
    """The command's stdout; it must exit 0 and write nothing to stderr."""
    code, out, err = await cli(server, *args)
    assert (code, err) == (0, ""), out + err
    return out


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def workers(server: ServerProcess) -> AsyncIterator[Any]:
    started: list[SimWorker] = []

    async def start(agent_name: str, **opts: Any) -> SimWorker:
        w = SimWorker(SimWorkerOptions(url=server.url, agent_name=agent_name, **opts))
        await w.connect()
        started.append(w)
        return w

    yield start
    for w in started:
        await w.aclose()


async def until(predicate: Any, what: str) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + TIMEOUT
    while not (result := predicate()):
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return result


async def test_dispatch_create_list_delete(server: ServerProcess, workers: Any) -> None:
    w = await workers("cli-agent", policy="accept")
    out = await ok(
        server, "dispatch", "create", "--room", "cli-room", "--agent-name", "cli-agent", "--metadata", "m1"
    )
    assert "created: agent 'cli-agent' in room 'cli-room'" in out
    dispatch_id = out.split()[1]
    assert dispatch_id.startswith("AD_")
    await until(lambda: w.received.assignments, "the assignment")
    job_id = w.received.assignments[0].job.id
    await w.finish(job_id, agent.JobStatus.JS_RUNNING)

    listed = json.loads(await ok(server, "dispatch", "list", "cli-room", "--json"))
    assert [(d["id"], d["agent_name"], d["metadata"]) for d in listed] == [(dispatch_id, "cli-agent", "m1")]
    table = await ok(server, "dispatch", "list", "cli-room")
    assert dispatch_id in table and job_id in table and w.id in table

    out = await ok(server, "dispatch", "delete", "cli-room", dispatch_id)
    assert f"dispatch {dispatch_id} deleted" in out
    await until(lambda: job_id in w.received.terminations, "the job's termination")


async def test_room_create_list_delete(server: ServerProcess) -> None:
    out = await ok(server, "room", "create", "ops-room", "--empty-timeout", "600", "--metadata", "tier=gold")
    assert out.startswith("room ops-room (RM_") and "created" in out
    rooms = json.loads(await ok(server, "room", "list", "ops-room", "--json"))
    assert [(r["name"], r["metadata"]) for r in rooms] == [("ops-room", "tier=gold")]
    assert "ops-room" in await ok(server, "room", "list")
    assert "room ops-room deleted" in await ok(server, "room", "delete", "ops-room")
    assert json.loads(await ok(server, "room", "list", "ops-room", "--json")) == []


async def test_workers_lists_each_worker_with_its_load(server: ServerProcess, workers: Any) -> None:
    w = await workers("listed-agent")
    await w.report(load=0.33)
    rows = await until_json(server, ["workers", "--json"], lambda rows: any(
        r["worker_id"] == w.id and r["load"] == 0.33 for r in rows))  # fmt: skip
    [row] = [r for r in rows if r["worker_id"] == w.id]
    assert (row["agent_name"], row["state"]) == ("listed-agent", "available")
    table = await ok(server, "workers")
    assert w.id in table and "listed-agent" in table and "0.33" in table


async def until_json(server: ServerProcess, args: list[str], predicate: Any) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + TIMEOUT
    while True:
        doc = json.loads(await ok(server, *args))
        if predicate(doc):
            return doc
        assert loop.time() < end, f"`agentdispatch {' '.join(args)}` never showed it: {doc}"


async def test_status_shows_capacity_waiting_and_failures_with_reasons(
    server: ServerProcess, workers: Any
) -> None:
    w = await workers("flaky-agent")
    await ok(server, "dispatch", "create", "--room", "flaky-room", "--agent-name", "flaky-agent",
             "--restart-policy", "never")  # fmt: skip
    await until(lambda: w.received.assignments, "the assignment")
    job_id = w.received.assignments[0].job.id
    await w.finish(job_id, agent.JobStatus.JS_FAILED, error="entrypoint raised RuntimeError: tts quota")
    await ok(server, "dispatch", "create", "--room", "queue-room", "--agent-name", "nobody-yet")
    doc = await until_json(server, ["status", "--json"], lambda d: any(
        "tts quota" in f["error"] for f in d["recent_failures"]))  # fmt: skip
    assert doc["waiting"]["nobody-yet"]["count"] == 1
    assert doc["capacity"]["workers"] >= 1
    screen = await ok(server, "status")
    for expected in (
        "workers",
        "waiting for a worker",
        "nobody-yet",
        "recent failures",
        "tts quota",
        "latency",
    ):
        assert expected in screen, (expected, screen)


async def test_events_follow_prints_the_job_lifecycle_live(server: ServerProcess, workers: Any) -> None:
    proc = await asyncio.create_subprocess_exec(
        *agentdispatch_command(), "events", "--follow", "--json", env=env_for(server),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []

    async def read_until(predicate: Any) -> None:
        while not any(predicate(e) for e in seen):
            line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)  # type: ignore[union-attr]
            assert line, "events --follow exited"
            seen.append(json.loads(line))

    try:
        assert proc.stderr is not None
        opened = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        assert opened.startswith(b"following events of http://127.0.0.1:")  # the stream is open
        w = await workers("followed-agent", job_duration=0.2)
        await read_until(lambda e: e["type"] == "worker" and e["worker"]["worker_id"] == w.id)
        await ok(server, "dispatch", "create", "--room", "followed-room", "--agent-name", "followed-agent")
        await read_until(
            lambda e: e["type"] == "job" and e["kind"] == "ended" and e["room"] == "followed-room"
        )
    finally:
        proc.terminate()
        await proc.wait()
    kinds = [e["kind"] for e in seen if e.get("type") == "job" and e.get("room") == "followed-room"]
    assert kinds[0] == "created" and kinds[-1] == "ended", kinds
    assert {"offered", "assigned", "running"} <= set(kinds)
    [ended] = [e for e in seen if e.get("kind") == "ended" and e.get("room") == "followed-room"]
    assert (ended["status"], ended["worker_id"]) == ("success", w.id)


async def test_token_create_mints_a_join_token_the_server_accepts(server: ServerProcess, http: Any) -> None:
    doc = json.loads(
        await ok(server, "token", "create", "--room", "tok-room", "--identity", "alice", "--json")
    )
    claims = api.TokenVerifier("devkey", "secret").verify(doc["token"])
    assert (claims.identity, claims.video.room, claims.video.room_join) == ("alice", "tok-room", True)
    assert not claims.video.room_admin
    ws_url = server.url.replace("http://", "ws://") + "/presence"
    async with http.ws_connect(ws_url, headers={"Authorization": f"Bearer {doc['token']}"}):
        rooms = await until_json(server, ["room", "list", "tok-room", "--json"],
                                 lambda rs: rs and rs[0].get("num_participants") == 1)  # fmt: skip
    assert rooms[0]["name"] == "tok-room"
    plain = await ok(server, "token", "create", "--room", "tok-room", "--admin")
    assert api.TokenVerifier("devkey", "secret").verify(plain.strip()).video.room_admin


async def test_a_wrong_secret_is_a_one_line_error(server: ServerProcess) -> None:
    code, out, err = await cli(server, "dispatch", "list", "any-room", secret="not-the-secret")
    assert (code, out) == (1, "")
    assert err.startswith("Error: unauthenticated") and len(err.strip().splitlines()) == 1, err


async def test_events_without_follow_prints_recent_jobs_oldest_first(
    server: ServerProcess, workers: Any
) -> None:
    w = await workers("recent-agent", job_duration=0.05)
    for room in ("recent-1", "recent-2"):
        await ok(server, "dispatch", "create", "--room", room, "--agent-name", "recent-agent")
    await until(lambda: len(w.received.assignments) == 2, "two assignments")

    def ended(lines: list[dict[str, Any]]) -> list[str]:
        return [e["room"] for e in lines if e["kind"] == "ended" and e["room"].startswith("recent-")]

    loop = asyncio.get_running_loop()
    end = loop.time() + TIMEOUT
    while True:
        lines = [json.loads(line) for line in (await ok(server, "events", "--json")).splitlines()]
        if len(ended(lines)) == 2:
            break
        assert loop.time() < end, lines
    assert ended(lines) == ["recent-1", "recent-2"]
    text = await ok(server, "events")
    assert "job    ended" in text and "room=recent-2" in text and "status=success" in text
