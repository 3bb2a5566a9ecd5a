"""`agentdispatch room join`: a user in a room from the terminal, talking to a real echo agent.

Real processes: the server, a worker running examples/echo_agent.py, and the chat client fed by stdin.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from agentdispatch.testing.serverproc import ServerProcess, agentdispatch_command

ROOT = Path(__file__).resolve().parents[2]


async def _read_until(stream: asyncio.StreamReader, needle: str, seen: list[str], timeout: float) -> None:
    async def scan() -> None:
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"output ended before {needle!r}: {seen}")
            seen.append(line.decode().rstrip())
            if needle in seen[-1]:
                return

    await asyncio.wait_for(scan(), timeout)


async def test_room_join_talks_to_the_echo_agent() -> None:
    with ServerProcess() as server:
        env = {
            **os.environ,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": "devkey",
            "LIVEKIT_API_SECRET": "secret",
        }
        worker = await asyncio.create_subprocess_exec(
            *agentdispatch_command(),
            "worker",
            "dev",
            str(ROOT / "examples" / "echo_agent.py"),
            "--port",
            "0",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        chat = await asyncio.create_subprocess_exec(
            *agentdispatch_command(),
            "room",
            "join",
            "demo",
            "--identity",
            "alice",
            "--agent",
            "echo",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        seen: list[str] = []
        try:
            assert chat.stdout is not None and chat.stdin is not None
            await _read_until(chat.stdout, "* joined demo", seen, 60)
            await _read_until(chat.stdout, "Hello alice", seen, 90)  # the agent's greeting: it was dispatched
            chat.stdin.write(b"hi there\n")
            await chat.stdin.drain()
            await _read_until(chat.stdout, "echo: hi there", seen, 60)
            chat.stdin.close()  # end of input: the client leaves and exits 0
            assert await asyncio.wait_for(chat.wait(), 30) == 0
        finally:
            for proc in (chat, worker):
                if proc.returncode is None:
                    proc.terminate()
                    await asyncio.wait_for(proc.wait(), 30)
        assert any(line.startswith("* echo-") or "(agent) joined" in line for line in seen), seen
    assert sys.executable
