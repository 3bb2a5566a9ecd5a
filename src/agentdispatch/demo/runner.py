"""`agentdispatch demo`: an in-process server, a few workers, and dispatches you can watch.

Everything runs in one process on the embedded in-memory server. The story it tells:

- a handful of workers (agent_name "demo") take ~20 dispatches, some spread out, some in a burst;
  jobs run 1-3 s and end, one worker reports a small load so it gets fewer jobs;
- one dispatch asks for an agent nobody serves: it waits, then ends FAILED "no worker available";
- one dispatch is created before its worker registers: it waits, then runs.

The workers come from a `WorkerSource`; today simulated protocol clients (`SimWorkerSource`), later
the real worker runtime can plug in without touching the script or the view. What the table shows
is read back through ListDispatch (livekit-api), the same API an operator would use.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from livekit import api
from livekit.protocol import agent, agent_dispatch
from rich.console import Console
from rich.live import Live

from ..server import DEV_KEYS, DispatchServer, ServerConfig
from ..testing.simworker import SimWorker, SimWorkerOptions
from .view import DemoSummary, JobRow, render_jobs, render_summary, summarize

ENDED = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED, agent.JobStatus.JS_CANCELLED)


@dataclass(frozen=True)
class DemoSettings:
    workers: int = 4
    dispatches: int = 20
    #: seconds over which the regular dispatches are created
    seconds: float = 6.0
    agent_name: str = "demo"
    #: the server's dispatch deadline: how long the unserved dispatch waits before it fails
    deadline: float = 3.0
    refresh: float = 0.25
    #: job durations of the regular workers are spread over this range (seconds)
    job_seconds: tuple[float, float] = (1.0, 3.0)

    @property
    def late_agent(self) -> str:
        return f"{self.agent_name}-late"

    @property
    def late_worker_at(self) -> float:
        return min(1.5, self.deadline / 2)

    @property
    def time_limit(self) -> float:
        return self.seconds + self.job_seconds[1] + self.deadline + 8.0


@dataclass(frozen=True)
class DemoWorkerSpec:
    name: str
    agent_name: str
    job_duration: float
    load: float = 0.0


class WorkerSource(Protocol):
    """Starts the demo's workers against a server URL; `start_worker` returns the worker id."""

    async def start_worker(self, url: str, spec: DemoWorkerSpec) -> str: ...

    async def aclose(self) -> None: ...


class SimWorkerSource:
    """Workers as simulated protocol clients (bench/simworker.py), sharing one HTTP session."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[SimWorker] = []

    async def start_worker(self, url: str, spec: DemoWorkerSpec) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        key, secret = next(iter(DEV_KEYS.items()))
        opts = SimWorkerOptions(
            url=url,
            api_key=key,
            api_secret=secret,
            agent_name=spec.agent_name,
            job_duration=spec.job_duration,
            load=spec.load,
            status_interval=2.5,  # reports like a real worker, so the server keeps trusting its load
        )
        worker = SimWorker(opts, self._session)
        await worker.connect()
        self._workers.append(worker)
        return worker.id

    async def aclose(self) -> None:
        await asyncio.gather(*(w.aclose() for w in self._workers), return_exceptions=True)
        if self._session is not None:
            await self._session.close()


@dataclass(frozen=True)
class PlannedDispatch:
    at: float
    room: str
    agent_name: str


def regular_workers(settings: DemoSettings) -> list[DemoWorkerSpec]:
    low, high = settings.job_seconds
    count = settings.workers
    specs = []
    for i in range(count):
        duration = low + (high - low) * (i / (count - 1) if count > 1 else 0.5)
        load = 0.3 if count > 1 and i == count - 1 else 0.0  # one busier worker gets fewer jobs
        specs.append(DemoWorkerSpec(f"worker-{i + 1}", settings.agent_name, round(duration, 2), load))
    return specs


def plan_dispatches(settings: DemoSettings) -> list[PlannedDispatch]:
    """The unserved one, the early one for the late worker, then the regular ones with a burst."""
    plan = [
        PlannedDispatch(0.1, "room-unserved", "nobody"),
        PlannedDispatch(0.2, "room-early", settings.late_agent),
    ]
    n = settings.dispatches
    burst = n // 3
    steady = n - burst
    start, end = 0.3, max(0.4, settings.seconds)
    steady_times = [start + (end - start) * i / max(1, steady - 1) for i in range(steady)]
    burst_times = [end / 2] * burst
    times = sorted(steady_times + burst_times)
    plan += [
        PlannedDispatch(round(t, 3), f"room-{i + 1:02d}", settings.agent_name) for i, t in enumerate(times)
    ]
    return plan


@dataclass
class DemoState:
    rows: dict[str, JobRow] = field(default_factory=dict)
    rooms: list[str] = field(default_factory=list)
    worker_names: dict[str, str] = field(default_factory=dict)
    create_errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    script_done: bool = False

    def all_ended(self) -> bool:
        return self.script_done and bool(self.rows) and all(r.status in ENDED for r in self.rows.values())


def rows_from(dispatch: agent_dispatch.AgentDispatch, names: dict[str, str]) -> list[JobRow]:
    return [
        JobRow(
            job_id=job.id,
            room=dispatch.room,
            agent_name=dispatch.agent_name,
            worker=names.get(job.state.worker_id, job.state.worker_id),
            status=job.state.status,
            created_ns=dispatch.state.created_at,
            started_ns=job.state.started_at,
            ended_ns=job.state.ended_at,
            error=job.state.error,
        )
        for job in dispatch.state.jobs
    ]


class Demo:
    def __init__(self, settings: DemoSettings, source: WorkerSource, console: Console) -> None:
        self.settings = settings
        self.source = source
        self.console = console
        self.state = DemoState()

    async def run(self) -> DemoSummary:
        server = DispatchServer(ServerConfig(port=0, dispatch_deadline=self.settings.deadline))
        await server.start()
        key, secret = next(iter(DEV_KEYS.items()))
        lk = api.LiveKitAPI(server.url, key, secret)
        try:
            self.console.print(self.describe(server.url))
            with Live(render_jobs(self.state_view()), console=self.console, refresh_per_second=8) as live:
                await self._drive(server.url, lk, live)
                await self._poll(lk)  # final statuses, straight from ListDispatch
                live.update(render_jobs(self.state_view()))
            self.console.line()
            return summarize(
                list(self.state.rows.values()), self.state.worker_names, self.state.create_errors
            )
        finally:
            await lk.aclose()
            await self.source.aclose()
            await server.aclose()

    def describe(self, url: str) -> str:
        s = self.settings
        busy = [w.name for w in regular_workers(s) if w.load]
        return (
            f"in-memory server at {url} (dispatch deadline {s.deadline:g} s)\n"
            f"{s.workers} workers for agent {s.agent_name!r},"
            f" jobs last {s.job_seconds[0]:g}-{s.job_seconds[1]:g} s"
            + (f"; {busy[0]} reports load 0.3" if busy else "")
            + f"\n{s.dispatches} dispatches over {s.seconds:g} s (a third of them in one burst)\n"
            f"+1 dispatch for agent 'nobody' (no such worker: it waits, then fails)\n"
            f"+1 dispatch for {s.late_agent!r}, whose worker registers only at {s.late_worker_at:g} s\n"
        )

    def state_view(self) -> tuple[Sequence[JobRow], float, bool]:
        return list(self.state.rows.values()), time.monotonic() - self.state.started, self.state.script_done

    async def _drive(self, url: str, lk: api.LiveKitAPI, live: Live) -> None:
        script = asyncio.get_running_loop().create_task(self._script(url, lk), name="demo-script")
        deadline = self.state.started + self.settings.time_limit
        try:
            while not self.state.all_ended() and time.monotonic() < deadline:
                await asyncio.sleep(self.settings.refresh)
                await self._poll(lk)
                live.update(render_jobs(self.state_view()))
                if script.done() and script.exception() is not None:
                    break
        finally:
            if not script.done():
                script.cancel()
            await asyncio.gather(script, return_exceptions=True)
        if not script.cancelled():  # cancelled: the time limit ended it, the summary says so
            script.result()  # a failure of the script itself is a bug: let it show

    async def _script(self, url: str, lk: api.LiveKitAPI) -> None:
        s = self.settings
        for spec in regular_workers(s):
            self.state.worker_names[await self.source.start_worker(url, spec)] = spec.name
        late = DemoWorkerSpec("late-worker", s.late_agent, job_duration=s.job_seconds[0])
        actions = [self._at(p.at, functools.partial(self._dispatch, lk, p)) for p in plan_dispatches(s)]
        actions.append(self._at(s.late_worker_at, functools.partial(self._start_late, url, late)))
        await asyncio.gather(*actions)
        self.state.script_done = True

    async def _at(self, at: float, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = self.state.started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await action()

    async def _start_late(self, url: str, spec: DemoWorkerSpec) -> None:
        self.state.worker_names[await self.source.start_worker(url, spec)] = spec.name

    async def _dispatch(self, lk: api.LiveKitAPI, planned: PlannedDispatch) -> None:
        req = api.CreateAgentDispatchRequest(agent_name=planned.agent_name, room=planned.room)
        try:
            await lk.agent_dispatch.create_dispatch(req)
        except (api.ServerError, aiohttp.ClientError) as exc:
            self.state.create_errors.append(f"{planned.room}: {exc}")
            return
        self.state.rooms.append(planned.room)

    async def _poll(self, lk: api.LiveKitAPI) -> None:
        results = await asyncio.gather(*(lk.agent_dispatch.list_dispatch(room) for room in self.state.rooms))
        for dispatches in results:
            for dispatch in dispatches:
                for row in rows_from(dispatch, self.state.worker_names):
                    self.state.rows[row.job_id] = row


async def run_demo(
    settings: DemoSettings, console: Console, source: WorkerSource | None = None
) -> DemoSummary:
    """Run the demo; print the live table and the summary on `console`."""
    demo = Demo(settings, source or SimWorkerSource(), console)
    summary = await demo.run()
    console.print(render_summary(summary))
    return summary
