"""Hostile HTTP clients against a real server process: split and chunked bodies, truncated bodies,
slowloris sockets, a connection flood, a queue filled with large metadata, names a worker could never
serve. Each test has the shape of an outside tester's report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from hostile import admin_token, list_dispatches, logged_server, raw_http
from livekit import api
from livekit.protocol import agent_dispatch

CREATE = "/twirp/livekit.AgentDispatchService/CreateDispatch"


def _head(port: int, room: str, content_type: str, extra: str) -> bytes:
    return (
        f"POST {CREATE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {admin_token(room)}\r\n"
        f"Content-Type: {content_type}\r\nConnection: close\r\n{extra}\r\n"
    ).encode()


async def test_large_bodies_arrive_whole_in_many_segments_and_chunked(tmp_path: Path) -> None:
    with logged_server(tmp_path) as server:
        # livekit-api's own client, 800 KB of metadata (before: truncated 40 times of 40)
        lk = api.LiveKitAPI(server.url, "devkey", "secret")
        try:
            for i in range(5):
                req = api.CreateAgentDispatchRequest(agent_name="a", room=f"big-{i}", metadata="m" * 800_000)
                created = await lk.agent_dispatch.create_dispatch(req)
                assert len(created.metadata) == 800_000
        finally:
            await lk.aclose()
        for i in range(5):
            [d] = await list_dispatches(server.url, f"big-{i}")
            assert len(str(d["metadata"])) == 800_000

        # JSON in 1 KB writes with pauses between them
        body = json.dumps({"room": "split", "agent_name": "a", "metadata": "s" * 300_000}).encode()
        parts = [body[i : i + 1024] for i in range(0, len(body), 1024)]
        head = _head(server.port, "split", "application/json", f"Content-Length: {len(body)}\r\n")
        reply = await raw_http(server.port, head, parts, pause=0.002)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        [d] = await list_dispatches(server.url, "split")
        assert d["metadata"] == "s" * 300_000

        # chunked transfer encoding (before: always failed)
        head = _head(server.port, "chunked", "application/json", "Transfer-Encoding: chunked\r\n")
        body = json.dumps({"room": "chunked", "agent_name": "a", "metadata": "c" * 300_000}).encode()
        parts = [body[i : i + 4096] for i in range(0, len(body), 4096)]
        chunks = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts] + [b"0\r\n\r\n"]
        reply = await raw_http(server.port, head, chunks)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        [d] = await list_dispatches(server.url, "chunked")
        assert d["metadata"] == "c" * 300_000


async def test_truncated_protobuf_body_is_refused_not_half_applied(tmp_path: Path) -> None:
    """A protobuf body cut at a field boundary used to be accepted with the metadata dropped."""
    with logged_server(tmp_path, "--body-timeout", "2") as server:
        req = agent_dispatch.CreateAgentDispatchRequest(agent_name="a", room="cut", metadata="x" * 50_000)
        body = req.SerializeToString()
        cut = body.index(b"x" * 10) - 3  # end of the fields before metadata
        head = _head(server.port, "cut", "application/protobuf", f"Content-Length: {len(body)}\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + body[:cut])
        await writer.drain()
        writer.write_eof()  # the client gives up mid-body
        reply = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:200]  # the client left: no answer due
        assert await list_dispatches(server.url, "cut") == []
        # a body that never finishes arriving gets an answer after the body timeout, not a hang
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + body[:cut])
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"deadline_exceeded" in reply
        assert await list_dispatches(server.url, "cut") == []


async def test_slowloris_sockets_are_closed_and_the_server_keeps_serving(tmp_path: Path) -> None:
    """200 sockets with partial headers or headers and no body were never closed (before)."""
    with logged_server(tmp_path, "--header-timeout", "1", "--body-timeout", "1") as server:
        sockets = []
        for i in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if i % 2:
                writer.write(b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                writer.write(_head(server.port, "r", "application/json", "Content-Length: 1000\r\n"))
            await writer.drain()
            sockets.append((reader, writer))
        async with aiohttp.ClientSession() as http, http.get(server.url + "/") as resp:
            assert resp.status == 200  # a normal client is served while they hang on
        started = asyncio.get_running_loop().time()
        ended = await asyncio.gather(*(asyncio.wait_for(r.read(), 60) for r, _ in sockets))
        took = asyncio.get_running_loop().time() - started
        print(f"200 slowloris sockets all closed by the server after {took:.2f} s")
        assert len(ended) == 200  # every one of them was closed by the server (EOF, maybe after a 408)
        assert sum(1 for e in ended if e.startswith(b"HTTP/1.1 408")) == 100
        for _, w in sockets:
            w.close()


async def test_over_the_connection_cap_new_sockets_get_503_at_once(tmp_path: Path) -> None:
    with logged_server(tmp_path, "--max-connections", "40", "--header-timeout", "60") as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(40)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        reply = await asyncio.wait_for(reader.read(), 10)
        assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(1.5)  # the guard's sweep releases closed sockets
        async with aiohttp.ClientSession() as http, http.get(server.url + "/") as resp:
            assert resp.status == 200
        assert "connection limit reached" in server.log()


async def test_waiting_jobs_are_bounded_by_bytes(tmp_path: Path) -> None:
    """2,000 waiting dispatches of 100 KB took +403 MB (before); now the byte budget answers 429."""
    with logged_server(tmp_path, "--queue-bytes-limit", str(1024 * 1024)) as server:
        lk = api.LiveKitAPI(server.url, "devkey", "secret")
        accepted, refused = 0, ""
        try:
            for i in range(30):
                req = api.CreateAgentDispatchRequest(
                    agent_name="nobody", room=f"q-{i}", metadata="q" * 100_000
                )
                try:
                    await lk.agent_dispatch.create_dispatch(req)
                    accepted += 1
                except api.TwirpError as exc:
                    refused = f"{exc.code}: {exc.message}"
                    break
        finally:
            await lk.aclose()
        print(f"byte budget 1 MiB: {accepted} dispatches of 100 KB accepted, then: {refused}")
        assert 5 <= accepted <= 10, accepted
        assert refused.startswith("resource_exhausted"), refused
        assert "bytes" in refused


async def test_names_with_control_characters_or_too_long_are_invalid_argument(tmp_path: Path) -> None:
    with logged_server(tmp_path) as server:
        lk = api.LiveKitAPI(server.url, "devkey", "secret")
        try:
            for room, agent_name in (("bad\x00room", "a"), ("ok-room", "agent\x07"), ("ok-room", "n" * 300)):
                try:
                    await lk.agent_dispatch.create_dispatch(
                        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
                    )
                    raise AssertionError(f"accepted {room!r} / {agent_name[:20]!r}")
                except api.TwirpError as exc:
                    assert exc.code == "invalid_argument", (exc.code, exc.message)
            assert await lk.room.list_rooms(api.ListRoomsRequest()) is not None
        finally:
            await lk.aclose()
        assert await list_dispatches(server.url, "ok-room") == []
