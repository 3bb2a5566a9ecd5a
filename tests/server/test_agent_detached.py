"""A worker's connection outlives the upgrade request's handler (ws_frames.InlineWebSocketResponse.detach):
the request is not kept, the connection is still guarded, and however it ends the server lets go of it."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.simworker import SimWorker


def _agent_requests() -> list[web.BaseRequest]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, web.BaseRequest) and o.path == "/agent"]


def _open(harness: Any) -> tuple[int, int]:
    """(connections the guard tracks, worker connection tasks) on the server."""
    return harness.server._guard.open_connections, len(harness.server._agent._connections)


def _transport(w: SimWorker) -> Any:
    conn = w.ws._conn  # aiohttp's client connection under the WebSocket
    assert conn is not None and conn.transport is not None
    return conn.transport


async def test_a_registered_worker_keeps_no_upgrade_request_alive(harness: Any) -> None:
    workers = [await harness.worker(agent_name="detached") for _ in range(3)]
    for w in workers:
        await w.sync()
    assert _agent_requests() == [], "the upgrade request (headers, token, URL) is still referenced"
    assert _open(harness)[1] == 3
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="detached", room="detached-room")
    )
    await harness.wait_for(lambda: sum(len(w.received.assignments) for w in workers) == 1)


@pytest.mark.parametrize("server_config", [{"header_timeout": 0.3}])
async def test_an_idle_worker_outlives_the_header_timeout(harness: Any) -> None:
    """The guard closes connections idle between requests after header_timeout; a worker's WebSocket
    is one long request even though its handler returned."""
    w = await harness.worker(agent_name="idle")
    await asyncio.sleep(2.5)  # two sweeps of the guard (every 1 s), each past the 0.3 s header timeout
    assert await w.ping() >= 0  # still served
    assert not w.closed.is_set()
    assert harness.server.registry.get(w.id) is not None


async def _ended(harness: Any, baseline: tuple[int, int], what: str) -> None:
    harness.server._guard.sweep()  # what the guard's once-a-second sweep does

    def released() -> bool:
        harness.server._guard.sweep()
        return _open(harness) == baseline

    await harness.wait_for(released, what=f"the server to let go of the connection ({what})")


async def test_however_a_worker_connection_ends_the_server_lets_go_of_it(
    harness: Any, make_token: Any
) -> None:
    baseline = _open(harness)
    # the worker closes cleanly
    w = await harness.worker(agent_name="ends")
    assert _open(harness) == (baseline[0] + 1, baseline[1] + 1)
    await w.aclose()
    await _ended(harness, baseline, "clean close")
    # the worker's TCP connection is cut (no close frame)
    w = await harness.worker(agent_name="ends")
    _transport(w).abort()
    await _ended(harness, baseline, "TCP reset")
    await harness.wait_for(lambda: harness.server.registry.get(w.id) is None, what="the worker gone")
    # the worker breaks the protocol: the server closes
    w = await harness.worker(agent_name="ends")
    _transport(w).write(b"\x82\x85abcd" + bytes(5))  # a masked binary frame that is not a WorkerMessage
    await harness.wait_for(lambda: w.closed.is_set(), what="the server to close the connection")
    await _ended(harness, baseline, "protocol violation")
    # never registers
    ws = await harness.raw_agent(make_token(agent=True))
    await ws.send_bytes(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)).SerializeToString())
    await ws.close()
    await _ended(harness, baseline, "unregistered")


async def test_shutdown_closes_detached_connections_with_going_away(harness: Any) -> None:
    w = await harness.worker(agent_name="bye")
    await harness.server.aclose()
    await harness.wait_for(lambda: w.closed.is_set(), what="the worker's connection to close")
    assert w.close_code == 1001
    assert len(harness.server._agent._connections) == 0
