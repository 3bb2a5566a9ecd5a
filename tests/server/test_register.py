"""Registration over /agent: register first, validated like LiveKit, replies in the worker's encoding."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.protocol import Encoding, decode_server_message, encode

MakeToken = Callable[..., str]
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009


async def _connect(harness: Any, make_token: MakeToken) -> aiohttp.ClientWebSocketResponse:
    ws: aiohttp.ClientWebSocketResponse = await harness.raw_agent(make_token(agent=True))
    return ws


async def _send(ws: aiohttp.ClientWebSocketResponse, msg: agent.WorkerMessage, encoding: Encoding) -> None:
    data = encode(msg, encoding)
    if isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


def _register(**fields: Any) -> agent.WorkerMessage:
    return agent.WorkerMessage(register=agent.RegisterWorkerRequest(**fields))


async def test_register_response(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, _register(type=agent.JobType.JT_ROOM, agent_name="bot", version="9"), Encoding.BINARY)
    reply = decode_server_message((await ws.receive(timeout=3)).data)
    resp = reply.register
    assert resp.worker_id.startswith("AW_")
    assert resp.server_info.agent_protocol == 1
    assert resp.server_info.node_id == harness.server.node_id
    session = harness.server.registry.get(resp.worker_id)
    assert session is not None
    assert session.registration.agent_name == "bot"
    # missing allowed_permissions -> LiveKit's defaults
    perms = session.registration.permissions
    assert (perms.can_subscribe, perms.can_publish, perms.can_publish_data, perms.can_update_metadata) == (
        True,
        True,
        True,
        True,
    )


@pytest.mark.parametrize(
    "first",
    [
        agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.1)),
        agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id="AJ_x", available=True)),
        agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id="AJ_x")),
    ],
    ids=lambda m: m.WhichOneof("message"),
)
async def test_first_message_must_be_register(
    harness: Any, make_token: MakeToken, first: agent.WorkerMessage
) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, first, Encoding.BINARY)
    code, reason, frames = await harness.read_until_close(ws)
    assert code == POLICY_VIOLATION
    assert "first message must be register" in reason
    assert first.WhichOneof("message") in reason
    assert frames == []
    assert len(harness.server.registry) == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (encode(_register(type=7), Encoding.BINARY), "unknown job type"),
        ('{"register": {"type": 7}}', "unknown job type"),
        (encode(_register(deployment="blue_green"), Encoding.BINARY), "deployment"),
        (encode(_register(deployment="blue green"), Encoding.BINARY), "deployment"),
        (encode(_register(deployment="blue\tgreen"), Encoding.BINARY), "deployment"),
        (encode(_register(deployment="blue\x01"), Encoding.BINARY), "deployment"),
        (encode(_register(deployment="x" * 65), Encoding.BINARY), "64 bytes"),
        (encode(_register(deployment="é" * 33), Encoding.BINARY), "64 bytes"),  # 66 bytes, 33 characters
        (b"", "empty or unknown"),
        (b"\xff\xff\xff", "invalid protobuf"),
        ("{not json", "invalid JSON"),
    ],
    ids=[
        "type-7",
        "type-7-json",
        "underscore",
        "space",
        "tab",
        "control",
        "65-bytes",
        "66-utf8-bytes",
        "empty-oneof",
        "garbage",
        "bad-json",
    ],
)
async def test_invalid_register_closes(
    harness: Any, make_token: MakeToken, frame: bytes | str, reason: str
) -> None:
    ws = await _connect(harness, make_token)
    if isinstance(frame, str):
        await ws.send_str(frame)
    else:
        await ws.send_bytes(frame)
    code, close_reason, frames = await harness.read_until_close(ws)
    assert code == POLICY_VIOLATION
    assert reason in close_reason
    assert frames == []
    assert len(harness.server.registry) == 0


async def test_unknown_job_type_name_in_json_closes(harness: Any, make_token: MakeToken) -> None:
    """A JSON register naming a job type we do not know must not silently become JT_ROOM."""
    ws = await _connect(harness, make_token)
    await ws.send_str('{"register": {"type": "JT_FROM_THE_FUTURE", "agentName": "future"}}')
    reply = await ws.receive(timeout=3)
    assert reply.type == aiohttp.WSMsgType.CLOSE, f"worker was registered: {reply.data!r}"
    assert ws.close_code == POLICY_VIOLATION
    assert len(harness.server.registry) == 0


async def test_deployment_limits_that_are_valid(harness: Any, make_token: MakeToken) -> None:
    for deployment in ("x" * 64, "blue-green.v2", ""):
        ws = await _connect(harness, make_token)
        await _send(ws, _register(deployment=deployment), Encoding.BINARY)
        reply = decode_server_message((await ws.receive(timeout=3)).data)
        assert reply.register.worker_id.startswith("AW_")


async def test_second_register_closes(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, _register(), Encoding.BINARY)
    worker_id = decode_server_message((await ws.receive(timeout=3)).data).register.worker_id
    await _send(ws, _register(agent_name="again"), Encoding.BINARY)
    code, reason, _ = await harness.read_until_close(ws)
    assert code == POLICY_VIOLATION
    assert "already registered" in reason
    await harness.wait_for(lambda: harness.server.registry.get(worker_id) is None, what="worker removed")


@pytest.mark.parametrize("server_config", [{"register_timeout": 0.3}])
async def test_register_timeout_closes(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    started = time.monotonic()
    code, reason, frames = await harness.read_until_close(ws)
    assert code == POLICY_VIOLATION
    assert "register" in reason  # the reason names what was missing
    assert frames == []
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("server_config", [{"register_timeout": 0.4}])
async def test_pings_do_not_extend_register_timeout(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    stamps = itertools.count(1)

    async def ping_until_closed() -> tuple[int | None, str]:
        while True:
            await _send(
                ws, agent.WorkerMessage(ping=agent.WorkerPing(timestamp=next(stamps))), Encoding.BINARY
            )
            msg = await ws.receive(timeout=3)
            if msg.type != aiohttp.WSMsgType.BINARY:
                return ws.close_code, msg.extra if isinstance(msg.extra, str) else ""
            assert decode_server_message(msg.data).HasField("pong")

    code, _ = await ping_until_closed()
    assert code == POLICY_VIOLATION


async def test_ping_before_register_is_tolerated(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, agent.WorkerMessage(ping=agent.WorkerPing(timestamp=424242)), Encoding.BINARY)
    pong = decode_server_message((await ws.receive(timeout=3)).data)
    assert pong.pong.last_timestamp == 424242
    await _send(ws, _register(), Encoding.BINARY)
    reply = decode_server_message((await ws.receive(timeout=3)).data)
    assert reply.register.worker_id.startswith("AW_")


@pytest.mark.parametrize("encoding", list(Encoding))
async def test_replies_use_the_workers_encoding(
    harness: Any, make_token: MakeToken, encoding: Encoding
) -> None:
    expected = aiohttp.WSMsgType.TEXT if encoding is Encoding.JSON else aiohttp.WSMsgType.BINARY
    ws = await _connect(harness, make_token)
    await _send(ws, agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)), encoding)
    await _send(ws, _register(agent_name="enc"), encoding)
    pong, reg = await ws.receive(timeout=3), await ws.receive(timeout=3)
    assert (pong.type, reg.type) == (expected, expected)
    if encoding is Encoding.JSON:
        assert json.loads(reg.data)["register"]["workerId"].startswith("AW_")
    assert decode_server_message(reg.data).register.worker_id.startswith("AW_")


async def test_json_worker_gets_json_offers(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await ws.send_str('{"register": {"type": "JT_ROOM", "agentName": "json-bot"}}')
    assert (await ws.receive(timeout=3)).type == aiohttp.WSMsgType.TEXT
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="json-bot", room="r-json")
    )
    offer = await ws.receive(timeout=3)
    assert offer.type == aiohttp.WSMsgType.TEXT
    job_id = json.loads(offer.data)["availability"]["job"]["id"]
    await ws.send_str(json.dumps({"availability": {"jobId": job_id, "available": True}}))
    assignment = await ws.receive(timeout=3)
    assert assignment.type == aiohttp.WSMsgType.TEXT
    assert json.loads(assignment.data)["assignment"]["job"]["id"] == job_id


@pytest.mark.parametrize("server_config", [{"max_frame_bytes": 1024}])
async def test_oversized_frame_closes(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, _register(), Encoding.BINARY)
    worker_id = decode_server_message((await ws.receive(timeout=3)).data).register.worker_id
    big = agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id="AJ_x", error="e" * 4096))
    await _send(ws, big, Encoding.BINARY)
    code, _, _ = await harness.read_until_close(ws)
    assert code == MESSAGE_TOO_BIG
    await harness.wait_for(lambda: harness.server.registry.get(worker_id) is None, what="worker removed")


async def test_default_frame_limit_is_two_mib(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, _register(), Encoding.BINARY)
    await ws.receive(timeout=3)
    under = agent.WorkerMessage(
        update_job=agent.UpdateJobStatus(job_id="AJ_x", error="e" * (2 * 1024 * 1024 - 64))
    )
    await _send(ws, under, Encoding.BINARY)
    await _send(ws, agent.WorkerMessage(ping=agent.WorkerPing(timestamp=7)), Encoding.BINARY)
    assert decode_server_message((await ws.receive(timeout=3)).data).pong.last_timestamp == 7
    over = agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id="AJ_x", error="e" * (2 * 1024 * 1024)))
    await _send(ws, over, Encoding.BINARY)
    code, _, _ = await harness.read_until_close(ws)
    assert code == MESSAGE_TOO_BIG


@pytest.mark.parametrize("server_config", [{"max_frame_bytes": 1024}])
async def test_frame_just_under_limit_is_fine(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    msg = _register(agent_name="n" * 200)
    assert len(encode(msg, Encoding.BINARY)) < 1024
    await _send(ws, msg, Encoding.BINARY)
    assert decode_server_message((await ws.receive(timeout=3)).data).register.worker_id.startswith("AW_")


@pytest.mark.parametrize("server_config", [{"default_ping_interval": 0.1}])
async def test_silent_worker_is_closed(harness: Any, make_token: MakeToken) -> None:
    ws = await _connect(harness, make_token)
    await _send(ws, _register(), Encoding.BINARY)
    worker_id = decode_server_message((await ws.receive(timeout=3)).data).register.worker_id
    code, reason, _ = await harness.read_until_close(ws)
    assert code == POLICY_VIOLATION
    assert "liveness" in reason and "not received within" in reason
    await harness.wait_for(lambda: harness.server.registry.get(worker_id) is None, what="worker removed")
