"""The worker as a real program: `python agent.py start` drains on SIGTERM, a second signal exits at once,
and a SIGKILLed worker takes every job process with it (`agentdispatch worker dev file.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from livekit import api
from livekit.protocol import agent

from agentdispatch.server import DispatchServer
from conftest import dispatch, listed_status, pid_gone, wait_record, wait_until

HERE = Path(__file__).parent
AGENT = HERE / "cli_agent.py"
CONSOLE = Path(sys.executable).parent / "agentdispatch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Program:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.info: dict[str, Any] = {}

    async def poll_info(self) -> dict[str, Any]:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}/worker") as r:
                self.info = await r.json()
        return self.info

    async def wait_info(self, predicate: Any, what: str, timeout: float = 60.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            info = await self.poll_info()
            if info and predicate(info):
                return info
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last /worker: {self.info}")

    async def stderr_text(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")


@pytest.fixture
async def launch(server: DispatchServer) -> AsyncIterator[Any]:
    programs: list[Program] = []

    async def start(*argv: str, new_session: bool = False) -> Program:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "--url",
            server.ws_url,
            "--api-key",
            "devkey",
            "--api-secret",
            "secret",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--log-level",
            "INFO",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=HERE,
            start_new_session=new_session,  # its own process group, to signal the group as systemd does
        )
        program = Program(proc, port)
        programs.append(program)
        await program.wait_info(
            lambda i: i.get("registered") and len(i["idle_pids"]) == 2, "registration + 2 idle"
        )
        return program

    yield start
    for program in programs:
        if program.proc.returncode is None:
            program.proc.kill()
            await program.proc.wait()


async def test_start_drains_on_sigterm_letting_the_job_finish(
    launch: Any, lkapi: api.LiveKitAPI, server: DispatchServer, tmp_path: Path
) -> None:
    program = await launch(sys.executable, str(AGENT), "start")
    out = str(tmp_path / "job.json")
    await dispatch(lkapi, "cli-room", "cli-agent", out=out, seconds=2.0)
    rec = await wait_record(out)
    await listed_status(lkapi, "cli-room", agent.JobStatus.JS_RUNNING)
    worker_id = program.info["id"]

    program.proc.send_signal(signal.SIGTERM)
    await wait_until(
        lambda: server.registry.get(worker_id) is not None and server.registry.get(worker_id).draining,
        5,
        "the server to see the worker draining",
    )
    code = await asyncio.wait_for(program.proc.wait(), 60)
    stderr = await program.stderr_text()
    assert code == 0, stderr
    assert "SIGTERM received: draining" in stderr
    assert (await wait_record(out, "state"))["state"] == "finished"
    job = await listed_status(lkapi, "cli-room", agent.JobStatus.JS_SUCCESS)
    assert job.state.worker_id == worker_id
    assert pid_gone(rec["pid"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_to_the_whole_process_group_drains_and_the_job_finishes(
    launch: Any, lkapi: api.LiveKitAPI, server: DispatchServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """`kill -TERM -<pgid>` (systemd KillMode=control-group, container inits, Ctrl-C): the job processes
    ignore the group's signal and the worker drains as if signalled alone."""
    program = await launch(sys.executable, str(AGENT), "start", new_session=True)
    pgid = os.getpgid(program.proc.pid)
    out = str(tmp_path / "group.json")
    room = f"cli-group-{sig.name.lower()}"
    await dispatch(lkapi, room, "cli-agent", out=out, seconds=4.0)
    rec = await wait_record(out)
    await listed_status(lkapi, room, agent.JobStatus.JS_RUNNING)
    tree = psutil.Process(program.proc.pid).children(recursive=True)
    assert os.getpgid(rec["pid"]) == pgid and all(os.getpgid(p.pid) == pgid for p in tree)

    os.killpg(pgid, sig)  # the worker, its forkserver, the job and the idle processes all get it
    code = await asyncio.wait_for(program.proc.wait(), 60)
    stderr = await program.stderr_text()
    assert code == 0, stderr
    assert f"{sig.name} received: draining" in stderr
    assert (await wait_record(out, "state"))["state"] == "finished"  # the job ran to its end
    job = await listed_status(lkapi, room, agent.JobStatus.JS_SUCCESS)
    assert job.state.error == ""
    await wait_until(lambda: all(pid_gone(p.pid) for p in tree), 10, "every child to exit")


async def test_second_signal_exits_at_once_and_kills_the_jobs(
    launch: Any, lkapi: api.LiveKitAPI, tmp_path: Path
) -> None:
    program = await launch(sys.executable, str(AGENT), "start")
    out = str(tmp_path / "long.json")
    await dispatch(lkapi, "cli-long", "cli-agent", out=out, seconds=600)
    rec = await wait_record(out)
    children = psutil.Process(program.proc.pid).children(recursive=True)
    program.proc.send_signal(signal.SIGTERM)
    await program.wait_info(lambda i: i["draining"], "draining")
    program.proc.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(program.proc.wait(), 30)
    stderr = await program.stderr_text()
    assert code == 130, stderr
    assert "second SIGINT: exiting now" in stderr
    job = await listed_status(lkapi, "cli-long", agent.JobStatus.JS_FAILED)
    assert job.state.error == "interrupted (worker aborted; killed at once)"
    await wait_until(
        lambda: pid_gone(rec["pid"]) and all(pid_gone(c.pid) for c in children), 5, "all children"
    )


@pytest.mark.parametrize("do", ["sleep", "ignore_shutdown", "child_and_wait"])
async def test_killed_worker_takes_its_job_processes_with_it(
    launch: Any, lkapi: api.LiveKitAPI, tmp_path: Path, do: str
) -> None:
    """SIGKILL the worker: every job process goes, even one that ignores SIGTERM and blocks its loop, and
    what a job started in a session of its own."""
    program = await launch(str(CONSOLE), "worker", "dev", str(AGENT))
    out = str(tmp_path / "orphan.json")
    await dispatch(lkapi, f"cli-orphan-{do}", "cli-agent", out=out, seconds=600, do=do)
    rec = await wait_record(out)
    info = await program.wait_info(
        lambda i: len(i["jobs"]) == 1 and len(i["idle_pids"]) == 2, "a job + 2 idle"
    )
    tree = psutil.Process(program.proc.pid).children(recursive=True)
    pids = {p.pid for p in tree}
    assert rec["pid"] in pids and set(info["idle_pids"]) <= pids
    if "child" in rec:
        assert rec["child"] in pids and os.getsid(rec["child"]) != os.getsid(rec["pid"])
    program.proc.kill()  # SIGKILL: no cleanup code runs in the worker
    await program.proc.wait()
    await wait_until(
        lambda: all(pid_gone(pid) for pid in pids), 10, "every child of the killed worker to exit"
    )


async def test_job_processes_arm_a_parent_death_signal(
    launch: Any, lkapi: api.LiveKitAPI, tmp_path: Path
) -> None:
    program = await launch(sys.executable, str(AGENT), "start")
    out = str(tmp_path / "pdeath.json")
    await dispatch(lkapi, "cli-pdeath", "cli-agent", out=out, do="pdeathsig")
    rec = await wait_record(out, "pdeathsig")
    assert rec["pdeathsig"] == signal.SIGKILL
    assert rec["ppid"] in {p.pid for p in psutil.Process(program.proc.pid).children()}  # the forkserver


def test_agent_file_without_entrypoint_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "empty_agent.py"
    bad.write_text("x = 1\n")
    result = subprocess.run(
        [str(CONSOLE), "worker", "dev", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "defines neither `worker_options = WorkerOptions(...)` nor `entrypoint`" in result.stderr


def test_start_without_credentials_names_what_is_missing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    result = subprocess.run(
        [sys.executable, str(AGENT), "start"], capture_output=True, text=True, timeout=30, cwd=HERE, env=env
    )
    assert result.returncode == 2
    assert "production workers need ws_url/LIVEKIT_URL" in result.stderr
