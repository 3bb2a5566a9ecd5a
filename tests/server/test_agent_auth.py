"""The /agent endpoint's HTTP layer: who may upgrade, and what a plain request gets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from livekit.protocol import agent

from agentdispatch.protocol import Encoding, decode_server_message, encode

MakeToken = Callable[..., str]


async def _refused_status(harness: Any, token: str | None, query: dict[str, str] | None = None) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await harness.raw_agent(token, query=query)
    return info.value.status


async def _register_over(ws: aiohttp.ClientWebSocketResponse) -> agent.ServerMessage:
    register = agent.WorkerMessage(register=agent.RegisterWorkerRequest(type=agent.JobType.JT_ROOM))
    await ws.send_bytes(encode(register, Encoding.BINARY))  # type: ignore[arg-type]
    frame = await ws.receive(timeout=3)
    return decode_server_message(frame.data)


async def test_no_token_is_401(harness: Any) -> None:
    assert await _refused_status(harness, None) == 401
    assert len(harness.server.registry) == 0


@pytest.mark.parametrize(
    "token_kwargs",
    [
        {"secret": "wrong-secret", "agent": True},
        {"ttl": -60, "agent": True},
        {"nbf_offset": 300, "agent": True},
        {"key": "unknown-key", "agent": True},
        {"algorithm": "none", "agent": True},
        {"room_join": True, "room": "r", "identity": "u"},  # a valid token, but no agent grant
        {"room_admin": True, "room_create": True, "room_list": True},
        {},  # no video grant at all
        {"agent": False},
    ],
    ids=[
        "wrong-secret",
        "expired",
        "not-yet-valid",
        "unknown-key",
        "alg-none",
        "join-grant-only",
        "admin-grants-only",
        "no-grants",
        "agent-false",
    ],
)
async def test_bad_or_insufficient_token_is_401(
    harness: Any, make_token: MakeToken, token_kwargs: dict[str, Any]
) -> None:
    assert await _refused_status(harness, make_token(**token_kwargs)) == 401
    assert await _refused_status(harness, None, query={"access_token": make_token(**token_kwargs)}) == 401


async def test_malformed_authorization_header_is_401(harness: Any) -> None:
    url = harness.server.ws_url + "/agent"
    for header in ("Basic Zm9vOmJhcg==", "Bearer", "Bearer not.a.jwt"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await harness.http.ws_connect(url, headers={"Authorization": header})
        assert info.value.status == 401


async def test_bearer_header_accepted(harness: Any, make_token: MakeToken) -> None:
    ws = await harness.raw_agent(make_token(agent=True))
    reply = await _register_over(ws)
    assert reply.register.worker_id.startswith("AW_")
    assert harness.server.registry.get(reply.register.worker_id) is not None


async def test_access_token_query_parameter_accepted(harness: Any, make_token: MakeToken) -> None:
    ws = await harness.raw_agent(None, query={"access_token": make_token(agent=True), "worker_token": "wt"})
    reply = await _register_over(ws)
    assert reply.register.worker_id.startswith("AW_")


async def test_second_api_key_accepted(make_harness: Any, make_token: MakeToken) -> None:
    h = await make_harness(keys={"devkey": "secret", "k2": "s2"})
    ws = await h.raw_agent(make_token(key="k2", secret="s2", agent=True))
    reply = await _register_over(ws)
    assert reply.register.worker_id.startswith("AW_")


async def test_plain_get_is_404(harness: Any, make_token: MakeToken) -> None:
    url = harness.server.url + "/agent"
    async with harness.http.get(url) as resp:
        assert resp.status == 404
    async with harness.http.get(url, headers={"Authorization": f"Bearer {make_token(agent=True)}"}) as resp:
        assert resp.status == 404


async def test_health(harness: Any) -> None:
    async with harness.http.get(harness.server.url + "/") as resp:
        assert resp.status == 200
        assert await resp.text() == "OK"
