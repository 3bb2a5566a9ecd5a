"""A real livekit-agents worker (PyPI livekit-agents, run as a subprocess) against our dispatch server, driven
by the real livekit-api Twirp client.

The server runs in-process (one per module, in the module's event loop) so the tests can look at its worker
registry; every livekit-agents worker is a separate OS process running ``lk_agent.py``, whose entrypoint
writes one JSON record per job into the worker's own output directory. Worker start-up costs seconds
(imports, the forkserver, one prewarmed process), so the workers are started once per module, side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from livekit import api
from livekit.protocol import agent, agent_dispatch

from agentdispatch.server import DispatchServer, ServerConfig
from agentdispatch.testing.serverproc import reap_tree

pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module")]

API_KEY = "devkey"
API_SECRET = "secret"
AGENT_SCRIPT = Path(__file__).with_name("lk_agent.py")

#: a livekit-agents worker needs a few seconds to register; CI machines can be slow
REGISTER_TIMEOUT = 45.0
#: dispatch → entrypoint ran → JS_SUCCESS reported
JOB_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
LOG_TAIL_CHARS = 8000

SHARED_AGENTS = ("interop", "", "alpha", "beta")


def unique_room(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def poll(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, context: Callable[[], str] = lambda: ""
) -> Any:
    """Call ``check`` until it returns something truthy; on timeout fail with ``context()`` attached."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{context()}")
        await asyncio.sleep(0.05)


class LkWorker:
    """One livekit-agents worker subprocess, its output directory and its captured log."""

    def __init__(self, server: DispatchServer, agent_name: str, root: Path) -> None:
        self.server = server
        self.agent_name = agent_name
        label = agent_name or "unnamed"
        self.out_dir = root / f"out-{label}"
        self.out_dir.mkdir()
        self.log_path = root / f"worker-{label}.log"
        self.worker_id = ""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "LK_"))
        }  # only the command line configures the worker
        env.update({"OUT": str(self.out_dir), "AGENT_NAME": agent_name, "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(AGENT_SCRIPT),
                    "start",
                    "--url",
                    server.ws_url,
                    "--api-key",
                    API_KEY,
                    "--api-secret",
                    API_SECRET,
                    "--log-level",
                    "DEBUG",
                ],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            text = f"<cannot read {self.log_path}: {exc}>"
        if len(text) > LOG_TAIL_CHARS:
            text = "…" + text[-LOG_TAIL_CHARS:]
        return f"--- livekit-agents worker {self.agent_name!r} (pid {self.pid}) log ---\n{text}"

    def describe(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        return f"worker {self.agent_name!r} {state}\n{self.log_tail()}"

    def records(self) -> dict[str, dict[str, Any]]:
        """job id → what the entrypoint saw, for every job this worker ran."""
        found = {}
        for path in self.out_dir.glob("AJ_*.json"):
            found[path.stem] = json.loads(path.read_text())
        return found

    async def wait_registered(self) -> str:
        def registered() -> str:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited before registering\n{self.describe()}")
            for session in self.server.registry:
                if session.reg is not None and session.reg.agent_name == self.agent_name:
                    return session.id
            return ""

        async def check() -> str:
            return registered()

        self.worker_id = await poll(
            check, REGISTER_TIMEOUT, f"{self.agent_name!r} to register", self.describe
        )
        return self.worker_id

    async def wait_record(self, job_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            return self.records().get(job_id)

        record: dict[str, Any] = await poll(check, JOB_TIMEOUT, f"entrypoint of {job_id}", self.describe)
        return record

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.pid).children(recursive=True)
        return []

    def terminate(self) -> list[psutil.Process]:
        """Send SIGTERM (livekit-agents then drains and exits); returns the process tree to reap."""
        tree = self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return tree

    def reap(self, tree: list[psutil.Process]) -> list[str]:
        """Wait for the worker and its children, killing what does not exit; list what had to be killed."""
        reaped = reap_tree(self.proc, tree, STOP_TIMEOUT)
        problems = []
        if reaped.killed_main:
            problems.append(f"worker {self.agent_name!r} ignored SIGTERM for {STOP_TIMEOUT}s; killed")
        problems += [f"child {c} of worker {self.agent_name!r} outlived it" for c in reaped.killed_children]
        if problems:
            problems.append(self.log_tail())
        return problems


class Launcher:
    def __init__(self, server: DispatchServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.workers: list[LkWorker] = []

    async def start(self, *agent_names: str) -> dict[str, LkWorker]:
        """Start workers side by side and wait until every one is registered with the server."""
        started = {name: LkWorker(self.server, name, self.root) for name in agent_names}
        self.workers.extend(started.values())
        await asyncio.gather(*(w.wait_registered() for w in started.values()))
        return started

    def stop(self, *workers: LkWorker) -> list[str]:
        """Stop workers side by side (SIGTERM, then SIGKILL); returns what had to be killed."""
        trees = [(w, w.terminate()) for w in workers]
        problems = []
        for worker, tree in trees:
            problems.extend(worker.reap(tree))
            if worker in self.workers:
                self.workers.remove(worker)
        return problems

    def stop_all(self) -> list[str]:
        return self.stop(*self.workers)


# -- fixtures (one server, one API client and one set of workers per module) ----------------------------
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lk_server() -> AsyncIterator[DispatchServer]:
    # a generous deadline: the queued-dispatch test waits for a worker process to start from scratch
    server = DispatchServer(ServerConfig(port=0, dispatch_deadline=60.0))
    await server.start()
    yield server
    await server.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lk_api(lk_server: DispatchServer) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(lk_server.url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def launcher(
    lk_server: DispatchServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Launcher]:
    launch = Launcher(lk_server, tmp_path_factory.mktemp("lk-workers"))
    try:
        yield launch
    finally:
        problems = launch.stop_all()
    assert not problems, "\n".join(problems)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workers(launcher: Launcher) -> dict[str, LkWorker]:
    return await launcher.start(*SHARED_AGENTS)


# -- helpers ---------------------------------------------------------------------------------------------
async def dispatches_of(lk_api: api.LiveKitAPI, room: str) -> list[agent_dispatch.AgentDispatch]:
    return list(await lk_api.agent_dispatch.list_dispatch(room))


async def wait_job_success(
    lk_api: api.LiveKitAPI, room: str, dispatch_id: str, *ctx_workers: LkWorker
) -> agent.Job:
    """Poll ListDispatch until the dispatch's only job is JS_SUCCESS (or fail fast on JS_FAILED)."""
    last: list[agent_dispatch.AgentDispatch] = []

    def context() -> str:
        return (
            "last ListDispatch answer:\n"
            + "\n".join(map(str, last))
            + "\n"
            + "\n".join(w.describe() for w in ctx_workers)
        )

    async def check() -> agent.Job | None:
        nonlocal last
        last = await dispatches_of(lk_api, room)
        for d in last:
            if d.id != dispatch_id:
                continue
            assert len(d.state.jobs) <= 1, f"dispatch has several jobs\n{context()}"
            for job in d.state.jobs:
                assert job.state.status != agent.JobStatus.JS_FAILED, f"job failed\n{context()}"
                if job.state.status == agent.JobStatus.JS_SUCCESS:
                    return job
        return None

    job: agent.Job = await poll(check, JOB_TIMEOUT, f"dispatch {dispatch_id} to succeed", context)
    return job


async def wait_pid_gone(pid: int, worker: LkWorker) -> None:
    """A job process exits after its job (livekit-agents runs one job per process)."""

    async def check() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await poll(check, JOB_TIMEOUT, f"job process {pid} to exit", worker.describe)


def assert_ran_in_child(record: dict[str, Any], worker: LkWorker) -> None:
    """The entrypoint ran in a process of its own, spawned (via the forkserver) under the worker process."""
    assert record["pid"] != worker.pid, f"entrypoint ran in the worker process itself\n{worker.describe()}"
    tree = {worker.pid} | {p.pid for p in worker.descendants()}
    # the job process may already be gone; its parent (the worker or its forkserver) is still alive
    assert record["pid"] in tree or record["ppid"] in tree, (
        f"job process {record['pid']} (parent {record['ppid']}) is not under worker pid {worker.pid}; "
        f"worker tree: {sorted(tree)}\n{worker.describe()}"
    )


# -- tests -----------------------------------------------------------------------------------------------
async def test_explicit_dispatch_runs_in_child_process(
    lk_api: api.LiveKitAPI, workers: dict[str, LkWorker]
) -> None:
    worker = workers["interop"]
    room = unique_room("explicit")
    metadata = json.dumps({"hello": "world", "n": 1})
    created = await lk_api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="interop", room=room, metadata=metadata)
    )
    assert created.id.startswith("AD_")
    assert created.agent_name == "interop" and created.room == room and created.metadata == metadata

    job = await wait_job_success(lk_api, room, created.id, worker)
    assert job.state.worker_id == worker.worker_id, worker.describe()
    assert job.dispatch_id == created.id

    record = await worker.wait_record(job.id)
    assert record["room"] == room
    assert record["metadata"] == metadata
    assert record["agent_name"] == "interop"
    assert record["dispatch_id"] == created.id
    assert_ran_in_child(record, worker)
    await wait_pid_gone(record["pid"], worker)

    # CreateDispatch made the room with this dispatch as its agent list: no implicit dispatch beside it
    listed = await dispatches_of(lk_api, room)
    assert [d.id for d in listed] == [created.id]
    for other in workers.values():
        if other is not worker:
            assert job.id not in other.records(), other.describe()


async def test_automatic_dispatch_on_create_room(
    lk_api: api.LiveKitAPI, workers: dict[str, LkWorker]
) -> None:
    worker = workers[""]
    room = unique_room("auto")
    created = await lk_api.room.create_room(api.CreateRoomRequest(name=room))
    assert created.name == room

    async def implicit_dispatch() -> agent_dispatch.AgentDispatch | None:
        listed = await dispatches_of(lk_api, room)
        return listed[0] if listed else None

    dispatch = await poll(implicit_dispatch, JOB_TIMEOUT, f"a dispatch in room {room}", worker.describe)
    listed = await dispatches_of(lk_api, room)
    assert len(listed) == 1, listed
    assert dispatch.agent_name == ""

    job = await wait_job_success(lk_api, room, dispatch.id, worker)
    assert job.state.worker_id == worker.worker_id, worker.describe()
    record = await worker.wait_record(job.id)
    assert record["room"] == room
    assert record["agent_name"] == ""
    assert_ran_in_child(record, worker)
    for name, other in workers.items():
        if other is not worker:
            assert job.id not in other.records(), f"named worker {name!r} got an automatic job"


async def test_dispatch_by_agent_name_picks_that_worker(
    lk_api: api.LiveKitAPI, workers: dict[str, LkWorker]
) -> None:
    alpha, beta = workers["alpha"], workers["beta"]
    room = unique_room("named")
    created = await lk_api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="beta", room=room, metadata="for beta")
    )
    job = await wait_job_success(lk_api, room, created.id, alpha, beta)
    assert job.state.worker_id == beta.worker_id
    assert job.state.worker_id != alpha.worker_id

    record = await beta.wait_record(job.id)
    assert record["worker_agent_name"] == "beta"
    assert record["metadata"] == "for beta"
    assert_ran_in_child(record, beta)
    assert job.id not in alpha.records(), alpha.describe()

    # and the other way round, in the same room: alpha's dispatch goes to alpha only
    second = await lk_api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="alpha", room=room, metadata="for alpha")
    )
    job2 = await wait_job_success(lk_api, room, second.id, alpha, beta)
    assert job2.state.worker_id == alpha.worker_id
    record2 = await alpha.wait_record(job2.id)
    assert record2["worker_agent_name"] == "alpha"
    assert job2.id not in beta.records(), beta.describe()
    assert sorted(d.agent_name for d in await dispatches_of(lk_api, room)) == ["alpha", "beta"]


async def test_dispatch_before_worker_starts_is_queued(
    lk_server: DispatchServer, lk_api: api.LiveKitAPI, launcher: Launcher
) -> None:
    room = unique_room("queued")
    created = await lk_api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="late", room=room, metadata="waited")
    )
    listed = await dispatches_of(lk_api, room)
    assert [d.id for d in listed] == [created.id]
    # nobody can take it yet: the job waits (LiveKit would have dropped it here)
    (waiting,) = listed[0].state.jobs
    assert waiting.state.status == agent.JobStatus.JS_PENDING, listed[0]
    assert not waiting.state.worker_id

    late = (await launcher.start("late"))["late"]
    try:
        job = await wait_job_success(lk_api, room, created.id, late)
        assert job.state.worker_id == late.worker_id
        record = await late.wait_record(job.id)
        assert record["metadata"] == "waited"
        assert record["room"] == room
        assert_ran_in_child(record, late)
        assert list(late.records()) == [job.id], "the queued job ran more than once"
    finally:
        problems = launcher.stop(late)
    assert not problems, "\n".join(problems)
    assert late.proc.returncode is not None
