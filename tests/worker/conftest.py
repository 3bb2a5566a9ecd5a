"""Fixtures for worker tests: a real dispatch server in-process, real workers with real job processes.

Every test that starts processes is checked at teardown for leaked pids (descendants of the test process
other than multiprocessing's own forkserver / resource tracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from livekit import api
from livekit.protocol import agent, agent_dispatch

from agentdispatch.protocol import WorkerError
from agentdispatch.server import DispatchServer, ServerConfig
from agentdispatch.server.events import JobEvent
from agentdispatch.testing.waiting import wait_until as poll
from agentdispatch.worker.options import WorkerOptions
from agentdispatch.worker.proc_pool import BackoffPolicy
from agentdispatch.worker.runtime import Tuning, Worker

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

FAST = Tuning(
    status_interval=0.5,
    load_interval=0.05,
    memory_interval=0.1,
    term_grace=0.5,
    reconnect_base=0.05,
    reconnect_cap=0.2,
    pool_backoff=BackoffPolicy(base=0.1, cap=1.0),
)

_MP_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll a condition (the server and worker expose no event for most of these)."""
    return await poll(predicate, timeout, what)


def descendants() -> list[psutil.Process]:
    """Our process tree minus multiprocessing's helpers (the forkserver outlives single tests).

    Job processes forked by the forkserver share its command line, so only the helpers that are *direct*
    children of this process are skipped; everything below them counts.
    """
    me = os.getpid()
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            helper = p.ppid() == me and any(h in cmd for h in _MP_HELPERS)
        except psutil.Error:
            continue
        if not helper:
            out.append(p)
    return out


async def assert_no_leaks(timeout: float = 5.0) -> None:
    try:
        await wait_until(lambda: not descendants(), timeout, "job processes to exit")
    except AssertionError:
        left = [(p.pid, " ".join(p.cmdline())[:80]) for p in descendants()]
        for p in descendants():
            p.kill()
        raise AssertionError(f"leaked processes: {left}") from None


def pid_gone(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class JobWatch:
    """Every job state change the server announced (latest copy per job id)."""

    def __init__(self, server: DispatchServer) -> None:
        self.latest: dict[str, agent.Job] = {}
        server.events.subscribe(self.on_event)

    def on_event(self, event: object) -> None:
        if isinstance(event, JobEvent):
            self(event.job)

    def __call__(self, job: agent.Job) -> None:
        copy = agent.Job()
        copy.CopyFrom(job)
        self.latest[job.id] = copy

    def with_status(self, status: int) -> list[agent.Job]:
        return [j for j in self.latest.values() if j.state.status == status]

    async def wait_status(self, job_id: str, status: int, timeout: float = 10.0) -> agent.Job:
        await wait_until(
            lambda: job_id in self.latest and self.latest[job_id].state.status == status,
            timeout,
            f"job {job_id} -> {agent.JobStatus.Name(status)}",  # type: ignore[arg-type]
        )
        return self.latest[job_id]


@pytest.fixture
async def server() -> AsyncIterator[DispatchServer]:
    srv = DispatchServer(ServerConfig(port=0, offer_timeout=3.0, dispatch_deadline=10.0, reconnect_grace=3.0))
    await srv.start()
    yield srv
    await srv.aclose()


@pytest.fixture
async def lkapi(server: DispatchServer) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(server.url, "devkey", "secret")
    yield client
    await client.aclose()


@pytest.fixture
def jobs(server: DispatchServer) -> JobWatch:
    return JobWatch(server)


@pytest.fixture
def out_file(tmp_path: Path) -> Callable[[str], str]:
    def make(name: str) -> str:
        return str(tmp_path / f"{name}.json")

    return make


def read_record(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


async def wait_record(path: str, key: str = "pid", timeout: float = 10.0) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if not os.path.exists(path):
            return None
        rec = read_record(path)
        return rec if key in rec else None

    result: dict[str, Any] = await wait_until(ready, timeout, f"record {path}")
    return result


async def dispatch(lk: api.LiveKitAPI, room: str, agent_name: str, **metadata: Any) -> str:
    """Create a dispatch (restart policy NEVER: a failed job stays failed); return its id."""
    req = api.CreateAgentDispatchRequest(
        agent_name=agent_name,
        room=room,
        metadata=json.dumps(metadata),
        restart_policy=agent_dispatch.JobRestartPolicy.JRP_NEVER,
    )
    d = await lk.agent_dispatch.create_dispatch(req)
    return str(d.id)


async def job_of(lk: api.LiveKitAPI, room: str, timeout: float = 10.0) -> agent.Job:
    """The (first) job of a room's dispatches, once one exists."""
    found: list[agent.Job] = []

    async def poll() -> bool:
        found.clear()
        for d in await lk.agent_dispatch.list_dispatch(room):
            found.extend(d.state.jobs)
        return bool(found)

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await poll():
        if loop.time() > end:
            raise AssertionError(f"no job in room {room}")
        await asyncio.sleep(0.05)
    return found[0]


async def listed_status(lk: api.LiveKitAPI, room: str, status: int, timeout: float = 10.0) -> agent.Job:
    """Wait until ListDispatch shows the room's job in `status`; return it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        job = await job_of(lk, room, timeout)
        if job.state.status == status:
            return job
        if loop.time() > end:
            raise AssertionError(f"job in {room} is {agent.JobStatus.Name(job.state.status)}, not {status}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def start_worker(server: DispatchServer) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def factory(
        *, tuning: Tuning = FAST, production: bool = False, registered: bool = True, ready: int = 0, **kw: Any
    ) -> Worker:
        kw.setdefault("ws_url", server.ws_url)
        kw.setdefault("num_idle_processes", 1)
        kw.setdefault("shutdown_process_timeout", 2.0)
        kw.setdefault("initialize_process_timeout", 10.0)
        worker = Worker(WorkerOptions(**kw).resolve(production=production), tuning)
        task = asyncio.get_running_loop().create_task(worker.run(), name="test-worker")
        running.append((worker, task))
        worker.test_task = task  # type: ignore[attr-defined]
        if registered:
            await wait_until(lambda: worker.conn.connected or task.done(), 10, "worker registration")
            if task.done():
                task.result()
        if ready:
            await asyncio.wait_for(worker.pool.wait_ready(ready), 20)
        return worker

    yield factory
    for worker, _ in running:
        worker.stop()
    for _, task in running:
        with contextlib.suppress(WorkerError):  # tests of fatal errors judged it already
            await asyncio.wait_for(asyncio.shield(task), 30)
    await assert_no_leaks()
