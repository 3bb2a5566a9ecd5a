"""A restart of a single memory-store node cuts no running call (issue: every deploy cut every call).

A real `agentdispatch server --dev` process runs a job on a real worker process (our runtime, the
hold agent); the server is stopped (SIGTERM, then SIGKILL in the second case) and started again on the
same port with an empty memory store. The worker reconnects on its own, reports the job with
migrate_job (ids and descriptions), the new process adopts it: ListDispatch shows it running on the
worker, the job process is the same pid and started once, and its end is recorded as JS_SUCCESS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.testing.serverproc import ServerProcess, ServerProcessSettings, free_port
from agentdispatch.testing.waiting import eventually

AGENTS = Path(__file__).resolve().parent / "agents"


async def _job(lk: api.LiveKitAPI, room: str) -> agent.Job | None:
    try:
        dispatches = await lk.agent_dispatch.list_dispatch(room)
    except (api.TwirpError, aiohttp.ClientError, OSError):  # the server is restarting: not yet
        return None
    jobs = [j for d in dispatches for j in d.state.jobs]
    return jobs[0] if jobs else None


async def _wait(predicate: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    await eventually(predicate, timeout, what)


def _spawn_worker(url: str, hold_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AD_HOLD_DIR": str(hold_dir)}
    cmd = [sys.executable, str(AGENTS / "hold_agent.py"), "start", "--url", url]
    cmd += ["--api-key", "devkey", "--api-secret", "secret"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_restarted_memory_node_keeps_the_running_call(tmp_path: Path, how: int) -> None:
    port = free_port()
    settings = ServerProcessSettings(port=port, extra_args=("--reconnect-grace", "30"))
    node = ServerProcess(settings)
    node.start()
    worker = _spawn_worker(f"ws://127.0.0.1:{port}", tmp_path, tmp_path / "worker.log")
    lk = api.LiveKitAPI(node.url, "devkey", "secret")
    try:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="hold", room="call")
        )

        async def running() -> bool:
            job = await _job(lk, "call")
            return job is not None and job.state.status == agent.JobStatus.JS_RUNNING

        await _wait(running, 90, "the call running")
        job = await _job(lk, "call")
        assert job is not None
        started = tmp_path / f"started-{job.id}"

        async def has_started() -> bool:
            return started.exists()

        await _wait(has_started, 60, "the job process started")
        if how == signal.SIGKILL:
            os.kill(node.pid, signal.SIGKILL)
        node.stop()
        node = ServerProcess(settings)  # same port, empty memory store
        node.start()

        async def adopted() -> bool:
            j = await _job(lk, "call")
            return j is not None and j.id == job.id and j.state.status == agent.JobStatus.JS_RUNNING

        await _wait(adopted, 120, "the new server process to adopt the running call")
        (tmp_path / f"finish-{job.id}").write_text("")

        async def succeeded() -> bool:
            j = await _job(lk, "call")
            return j is not None and j.state.status == agent.JobStatus.JS_SUCCESS

        await _wait(succeeded, 60, "the call's end recorded by the new server process")
        assert len(started.read_text().split()) == 1  # one job process, started once: not cut, not re-run
        assert worker.poll() is None
    finally:
        await lk.aclose()
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        node.stop()
