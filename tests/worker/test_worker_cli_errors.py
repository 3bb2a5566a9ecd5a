"""The worker CLI for a new user: the agent file's own options are honoured, a crashing job shows its
traceback in the worker's terminal, and each usual mistake gets one line with the fix (no traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.server import DispatchServer
from conftest import dispatch, listed_status, wait_until

HERE = Path(__file__).parent
AGENT = HERE / "cli_agent.py"
CONSOLE = Path(sys.executable).parent / "agentdispatch"
CREDENTIALS = ("--api-key", "devkey", "--api-secret", "secret")

DOCS_SHAPE = """
from agentdispatch import JobContext, WorkerOptions, cli


async def entrypoint(ctx: JobContext) -> None:
    print("job ran", ctx.job.id)


if __name__ == "__main__":
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint, agent_name="my-agent", num_idle_processes=1))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_to_exit(*argv: str, timeout: float = 90.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


class Running:
    """A worker program left running; its stderr is collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr = ""
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr += line.decode(errors="replace")

    async def wait_for(self, text: str, timeout: float = 60.0) -> None:
        await wait_until(lambda: text in self.stderr or self.proc.returncode is not None, timeout, text)
        assert text in self.stderr, self.stderr

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        try:  # the job processes hold stderr until they are gone too
            await asyncio.wait_for(asyncio.shield(self._reader), 20)
        except TimeoutError:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@pytest.fixture
async def running() -> object:
    started: list[Running] = []

    async def start(*argv: str, cwd: Path = HERE) -> Running:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd
        )
        started.append(Running(proc))
        return started[-1]

    yield start
    for r in started:
        await r.stop()


async def worker_info(port: int) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/worker") as resp:
        info: dict[str, object] = await resp.json()
        return info


async def test_worker_dev_honours_the_options_the_file_passes_to_run_app(
    running: object, server: DispatchServer, lkapi: api.LiveKitAPI, tmp_path: Path
) -> None:
    agent_file = tmp_path / "agent.py"
    agent_file.write_text(DOCS_SHAPE)
    port = free_port()
    worker = await running(  # type: ignore[operator]
        str(CONSOLE),
        "worker",
        "dev",
        str(agent_file),
        "--url",
        server.ws_url,
        "--port",
        str(port),
        cwd=tmp_path,
    )
    await worker.wait_for("worker registered")
    info = await worker_info(port)
    assert info["agent_name"] == "my-agent"
    await dispatch(lkapi, "docs-shape", "my-agent")
    job = await listed_status(lkapi, "docs-shape", agent.JobStatus.JS_SUCCESS, timeout=30)
    assert job.state.worker_id == info["id"]


async def test_a_job_that_raises_prints_its_traceback_in_the_worker_terminal(
    running: object, server: DispatchServer, lkapi: api.LiveKitAPI
) -> None:
    worker = await running(  # type: ignore[operator]
        sys.executable, str(AGENT), "dev", "--url", server.ws_url, "--port", "0"
    )
    await worker.wait_for("worker registered")
    await dispatch(lkapi, "crash-room", "cli-agent", do="crash")
    job = await listed_status(lkapi, "crash-room", agent.JobStatus.JS_FAILED, timeout=30)
    await worker.wait_for("RuntimeError: kaboom: the agent crashed on purpose")
    await worker.wait_for(f"job failed: RuntimeError: kaboom: the agent crashed on purpose job_id={job.id}")
    tb = worker.stderr[worker.stderr.index("job entrypoint raised") :]
    assert "Traceback (most recent call last):" in tb
    assert 'in entry_crash\n    raise RuntimeError("kaboom: the agent crashed on purpose")' in tb


async def test_health_port_in_use_is_one_line_naming_the_flag(server: DispatchServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["--url", server.ws_url, "--host", "127.0.0.1", "--port", str(port)]
        code, err = await run_to_exit(sys.executable, str(AGENT), "dev", *argv)
    assert code == 1, err
    assert (
        f"the worker's HTTP port 127.0.0.1:{port} is in use (another worker on this host?): "
        "pass --port N (WorkerOptions(port=N)), or --port 0 for a free port"
    ) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("scheme", ["wss", "https"])
async def test_tls_url_against_the_plain_server_says_use_ws(server: DispatchServer, scheme: str) -> None:
    plain = server.ws_url.rstrip("/")
    url = scheme + plain[len("ws") :]
    code, err = await run_to_exit(sys.executable, str(AGENT), "dev", "--url", url, "--port", "0")
    assert code == 1, err
    host = plain[len("ws://") :]
    assert f"the server at wss://{host} speaks plain ws://, not wss://: use --url ws://{host}" in err
    assert "Traceback" not in err
    assert "retry 1/" not in err


@pytest.mark.parametrize("suffix", ["/agent", "/twirp", "/agent/"])
async def test_an_endpoint_url_is_accepted_as_the_server_url(
    running: object, server: DispatchServer, suffix: str
) -> None:
    port = free_port()
    worker = await running(  # type: ignore[operator]
        sys.executable, str(AGENT), "dev", "--url", server.ws_url.rstrip("/") + suffix, "--port", str(port)
    )
    await worker.wait_for("worker registered")
    assert (await worker_info(port))["registered"] is True


async def test_a_wrong_path_is_one_line_not_minutes_of_retries(server: DispatchServer) -> None:
    url = server.ws_url.rstrip("/") + "/somewhere"
    code, err = await run_to_exit(sys.executable, str(AGENT), "dev", "--url", url, "--port", "0")
    assert code == 1, err
    assert f"{url}/agent answered 404: not a dispatch server's agent endpoint" in err
    assert "Traceback" not in err
    assert "retry 1/" not in err


async def test_an_unreachable_server_is_named_on_the_first_failure_then_retried(running: object) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    worker = await running(sys.executable, str(AGENT), "dev", "--url", url, "--port", "0")  # type: ignore[operator]
    await worker.wait_for(f"is `agentdispatch server` running at {url}? Retrying with backoff")
    await worker.wait_for("retry 2/")  # it keeps trying
    assert worker.stderr.count("is `agentdispatch server` running") == 1
    assert worker.proc.returncode is None
