"""A real livekit-agents entrypoint that calls `await ctx.connect()` learns, and the operator sees, that
WebRTC media is not served: the SDK logs our 501 message, the server logs the attempt with room and
identity, and ListDispatch says so on the job (the SDK itself reports JS_SUCCESS after the failure)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.serverproc import agentdispatch_command, free_port, wait_healthy

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.interop


def _spawn(cmd: list[str], log: object, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process (returns at once) with stdout/stderr to `log`."""
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)  # type: ignore[arg-type]


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_registered(url: str, agent_name: str, worker: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(1200):  # bounds a hang only
            if worker.poll() is not None:
                raise AssertionError(f"worker exited with {worker.returncode}:\n{_tail(log)}")
            async with http.get(f"{url}/admin/workers") as resp:
                workers = (await resp.json())["workers"] if resp.status == 200 else []
            if any(w["agent_name"] == agent_name for w in workers):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"worker {agent_name!r} did not register:\n{_tail(log)}")


async def test_ctx_connect_against_our_server_says_media_is_not_served(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = (tmp_path / "server.log").open("wb")
    server = _spawn([*agentdispatch_command(), "server", "--dev", "--port", str(port)], server_log)
    worker_log = (tmp_path / "worker.log").open("wb")
    worker = None
    lk = api.LiveKitAPI(url, "devkey", "secret")
    try:
        wait_healthy(url, 20, server)
        env = {**os.environ, "AGENT_NAME": "media"}
        cmd = [sys.executable, str(HERE / "media_agent.py"), "start", "--url", f"ws://127.0.0.1:{port}"]
        worker = _spawn([*cmd, "--api-key", "devkey", "--api-secret", "secret"], worker_log, env)
        # dispatch once the worker is registered: its start-up on a busy machine may outlast the deadline
        await _wait_registered(url, "media", worker, tmp_path / "worker.log")
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="media", room="m"))
        job = None
        for _ in range(900):  # bounds a hang only
            [dispatch] = await lk.agent_dispatch.list_dispatch("m")
            job = dispatch.state.jobs[0] if dispatch.state.jobs else None
            if job is not None and job.state.status in (
                agent.JobStatus.JS_SUCCESS,
                agent.JobStatus.JS_FAILED,
            ):
                break
            await asyncio.sleep(0.1)
        assert job is not None
        assert "tried to join WebRTC media (/rtc), which this server does not serve" in job.state.error
    finally:
        await lk.aclose()
        for proc in (worker, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        server_log.close()
        worker_log.close()
    log = (tmp_path / "server.log").read_text()
    assert "a client asked for WebRTC signalling" in log and "room=m" in log
    assert "not WebRTC media" in (tmp_path / "worker.log").read_text()  # the SDK printed our answer
