"""Shared pieces of the hostile-client tests: a real server process with its log, raw HTTP, tokens."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from livekit import api

from agentdispatch.testing.serverproc import agentdispatch_command, free_port, wait_healthy
from agentdispatch.testing.waiting import eventually

KEY, SECRET = "devkey", "secret"


class LoggedServer:
    """`agentdispatch server --dev` in a child process, its log (stderr) kept in a file."""

    def __init__(self, log_path: Path, args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [*agentdispatch_command(), "server", "--dev", "--port", str(self.port), "--log-level", "INFO"]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen([*cmd, *args], stdin=subprocess.DEVNULL, stderr=self._log)
        wait_healthy(self.url, 20.0, self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM; seconds until the process was gone."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextmanager
def logged_server(tmp_path: Path, *args: str) -> Iterator[LoggedServer]:
    server = LoggedServer(tmp_path / f"server-{os.getpid()}-{time.monotonic_ns()}.log", args)
    try:
        yield server
    finally:
        server.close()


def admin_token(room: str, key: str = KEY, secret: str = SECRET) -> str:
    grants = api.VideoGrants(room_admin=True, room=room, room_create=True, room_list=True)
    return api.AccessToken(key, secret).with_grants(grants).to_jwt()


def join_token(room: str, identity: str, kind: str = "") -> str:
    token = api.AccessToken(KEY, SECRET).with_identity(identity)
    if kind:
        token = token.with_kind(kind)  # type: ignore[arg-type]
    return token.with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt()


async def raw_http(port: int, head: bytes, body_parts: Sequence[bytes] = (), pause: float = 0.0) -> bytes:
    """Send a request as raw bytes, the body in the given pieces (each drained, then `pause`); the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        for part in body_parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def list_dispatches(url: str, room: str) -> list[dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/twirp/livekit.AgentDispatchService/ListDispatch",
            json={"room": room},
            headers={"Authorization": f"Bearer {admin_token(room)}"},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        return list(body.get("agent_dispatches", []))


async def wait_until(
    predicate: Callable[[], Awaitable[object]], timeout: float = 30.0, what: str = ""
) -> None:
    """Poll an async predicate until it holds (no timing assertion: the timeout only bounds a hang)."""
    await eventually(predicate, timeout, what)
