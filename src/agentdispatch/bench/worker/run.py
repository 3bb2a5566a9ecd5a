"""The worker benchmark: job start latency with a warm pool, and idle prewarmed process memory, for our worker
runtime and for a livekit-agents worker registered to the same server in the same run.

Layout of one run:

- the server: `agentdispatch server --dev` in its own process;
- worker "ours": `agents/ours_agent.py start` (agentdispatch worker runtime);
- worker "lk": `agents/lk_agent.py start` (livekit-agents, PyPI);
  both in production mode, the same `num_idle_processes`, a load function returning 0 (never FULL), and
  the same agent: the entrypoint takes CLOCK_MONOTONIC and wall-clock timestamps first, writes them to a
  file named by job id, then calls `ctx.shutdown()`.

Job start: jobs are dispatched one at a time, alternating between the two workers (the order flips every
round), each only once the target worker's pool is full again (every forkserver child prewarmed) plus a pause.
Two measures per job:

- dispatch -> entrypoint: CLOCK_MONOTONIC just before CreateDispatch is sent (this process) -> the
  entrypoint's first line (the job process). Includes the server's offer round trip to the worker.
- assignment -> entrypoint: the server's `job.state.started_at` (wall clock, set as it sends the
  JobAssignment) -> the entrypoint's wall clock. This is the architecture.md target (<= 0.5x livekit-agents).

Memory: once both pools are full and have settled, USS/PSS/RSS of every process of each worker's tree
(see `procs.py` for the roles and `memory.py` for the measures).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
from livekit import api
from livekit.protocol import agent

from ...protocol import ConfigError
from ...protocol.jwt_warnings import ignore_short_hmac_key_warning
from ...protocol.urls import websocket_base
from ...testing.serverproc import (
    HarnessError,
    ServerProcess,
    ServerProcessSettings,
    agentdispatch_command,
    free_port,
)
from .memory import summarize_tree
from .procs import LIVEKIT, OURS, WorkerProcess, WorkerSpec, pid_gone
from .record import monotonic_ns
from .result import JobSample, build_result

T = TypeVar("T")
Log = Callable[[str], None]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OURS_LAUNCH = ("script", "cli")
POLL_INTERVAL = 0.005
ENDED = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED)


@dataclass(frozen=True)
class WorkerBenchSettings:
    #: measured jobs per worker
    jobs: int = 40
    #: num_idle_processes of both workers
    idle: int = 3
    #: unmeasured jobs per worker first (they also prove both workers are registered)
    warmup_jobs: int = 2
    #: seconds between "pool full again" and the next dispatch
    pause: float = 0.25
    #: seconds both pools stay idle before memory is sampled
    settle: float = 2.0
    #: log level of both workers (production default of both: INFO)
    log_level: str = "INFO"
    #: how our worker is started: "script" = `python agent.py start` (cli.run_app),
    #: "cli" = `agentdispatch worker start agent.py`
    ours_launch: str = "script"
    start_timeout: float = 90.0
    job_timeout: float = 30.0
    #: keep the workers' logs and records here (default: a temporary directory, removed after the run)
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.idle < 1 or self.warmup_jobs < 0:
            raise ConfigError("jobs and idle must be >= 1, warmup_jobs >= 0")
        if self.pause < 0 or self.settle < 0 or self.start_timeout <= 0 or self.job_timeout <= 0:
            raise ConfigError("pause and settle must be >= 0, timeouts > 0")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.ours_launch not in OURS_LAUNCH:
            raise ConfigError(f"ours_launch must be one of {', '.join(OURS_LAUNCH)}")


def default_json_path(now: float) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("bench") / "results" / f"worker-{stamp}.json"


async def poll(
    check: Callable[[], T | None], timeout: float, what: str, alive: Callable[[], None] = lambda: None
) -> T:
    """Call `check` until it returns something other than None (or False); HarnessError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        alive()
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


class WorkerBench:
    def __init__(
        self,
        settings: WorkerBenchSettings,
        server: ServerProcess,
        client: api.LiveKitAPI,
        root: Path,
        log: Log,
    ) -> None:
        self.s = settings
        self.server = server
        self.api = client
        self.root = root
        self.log = log
        self.ours_http_port = free_port()
        self.workers: dict[str, WorkerProcess] = {}

    # -- workers -------------------------------------------------------------------------------------
    def _command(self, spec: WorkerSpec) -> list[str]:
        ws_url = websocket_base(self.server.url)
        level = self.s.log_level
        if spec is LIVEKIT:
            program = [sys.executable, str(spec.script), "start"]
            extra = ["--log-level", "WARN" if level == "WARNING" else level]
        else:
            extra = ["--log-level", level, "--host", "127.0.0.1", "--port", str(self.ours_http_port)]
            if self.s.ours_launch == "cli":
                program = [*agentdispatch_command(), "worker", "start", str(spec.script)]
            else:
                program = [sys.executable, str(spec.script), "start"]
        return [*program, "--url", ws_url, "--api-key", "devkey", "--api-secret", "secret", *extra]

    def start_workers(self) -> None:
        for spec in (OURS, LIVEKIT):
            self.workers[spec.kind] = WorkerProcess(spec, self.root, self._command(spec), self.s.idle)

    async def wait_warm(self, worker: WorkerProcess, timeout: float | None = None) -> list[int]:
        def full() -> list[int] | None:
            pids = worker.idle_pids()
            return pids if len(pids) >= self.s.idle else None

        what = f"{self.s.idle} prewarmed idle processes of the {worker.spec.kind} worker"
        return await poll(full, timeout or self.s.start_timeout, what, worker.check_running)

    def stop_workers(self) -> list[str]:
        problems: list[str] = []
        for worker in self.workers.values():
            problems.extend(worker.stop())
        return problems

    # -- jobs ----------------------------------------------------------------------------------------
    async def one_job(self, worker: WorkerProcess, label: str) -> JobSample:
        """Wait for a full pool, dispatch one job, wait until it ran, ended, and its process exited."""
        await self.wait_warm(worker)
        await asyncio.sleep(self.s.pause)
        kind = worker.spec.kind
        room = f"wb-{kind}-{label}-{uuid.uuid4().hex[:8]}"
        request = api.CreateAgentDispatchRequest(agent_name=kind, room=room)
        sent_wall, sent = time.time_ns(), monotonic_ns()
        created = await self.api.agent_dispatch.create_dispatch(request)
        answered = monotonic_ns()
        what = f"the entrypoint of dispatch {created.id} on the {kind} worker"
        await poll(lambda: worker.job_record(created.id), self.s.job_timeout, what, worker.check_running)
        job = await self._wait_ended(room, created.id)
        runs = worker.job_runs(created.id)
        pids = [int(run["pid"]) for run in runs]
        exited = f"job process(es) {pids} to exit"
        await poll(lambda: all(pid_gone(p) for p in pids), self.s.job_timeout, exited)
        return _sample(kind, created.id, job, runs, (sent, sent_wall, answered))

    async def _wait_ended(self, room: str, dispatch_id: str) -> agent.Job:
        deadline = time.monotonic() + self.s.job_timeout
        while time.monotonic() < deadline:
            for dispatch in await self.api.agent_dispatch.list_dispatch(room):
                if dispatch.id == dispatch_id and dispatch.state.jobs:
                    job = dispatch.state.jobs[-1]
                    if job.state.status in ENDED:
                        return job
            await asyncio.sleep(0.02)
        raise HarnessError(f"dispatch {dispatch_id} did not end within {self.s.job_timeout:g}s")

    async def run_jobs(self, count: int, label: str) -> list[JobSample]:
        """`count` rounds; each round one job per worker, the order flipping every round."""
        order = [self.workers[OURS.kind], self.workers[LIVEKIT.kind]]
        samples = []
        for i in range(count):
            for worker in order if i % 2 == 0 else order[::-1]:
                samples.append(await self.one_job(worker, f"{label}{i}"))
        return samples

    # -- memory --------------------------------------------------------------------------------------
    async def memory(self) -> dict[str, Any]:
        for worker in self.workers.values():
            await self.wait_warm(worker)
        await asyncio.sleep(self.s.settle)
        found = {}
        for kind, worker in self.workers.items():
            await self.wait_warm(worker)
            found[kind] = summarize_tree(worker.classify(), worker.ready_records())
        return found

    async def ours_info(self) -> dict[str, Any]:
        import aiohttp

        url = f"http://127.0.0.1:{self.ours_http_port}/worker"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            info: dict[str, Any] = await resp.json()
            return info


def _sample(
    kind: str, dispatch_id: str, job: agent.Job, runs: list[dict[str, Any]], sent: tuple[int, int, int]
) -> JobSample:
    """One job's measures, from its first run; `sent` = (monotonic, wall) before CreateDispatch, and
    monotonic after its answer."""
    sent_mono, sent_wall, answered = sent
    first = runs[0]
    entry_mono, entry_wall = int(first["mono_ns"]), int(first["wall_ns"])
    return JobSample(
        worker=kind,
        dispatch_id=dispatch_id,
        job_id=job.id,
        pid=int(first["pid"]),
        status=agent.JobStatus.Name(job.state.status),
        worker_id=job.state.worker_id,
        runs=len(runs),
        dispatch_to_entry_s=(entry_mono - sent_mono) / 1e9,
        # started_at is that of the job's last assignment: meaningful for a job that ran once only
        assignment_to_entry_s=(entry_wall - job.state.started_at) / 1e9,
        create_call_s=(answered - sent_mono) / 1e9,
        # wall minus monotonic moved between the send and the entrypoint: the wall clock was stepped, so
        # the wall-clock measure (server started_at -> entrypoint) of this job cannot be trusted
        wall_clock_step_s=((entry_wall - entry_mono) - (sent_wall - sent_mono)) / 1e9,
        modules_at_entry=int(first["modules"]),
        started_at_matches=int(runs[-1]["job_started_at_ns"]) in (0, job.state.started_at),
    )


def _busy_seconds(before: Any, after: Any) -> float:
    """CPU seconds the whole machine spent not idle between two `psutil.cpu_times()`."""

    def busy(t: Any) -> float:
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    return busy(after) - busy(before)


async def _measure(bench: WorkerBench) -> dict[str, Any]:
    s = bench.s
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    bench.start_workers()
    for worker in bench.workers.values():
        await bench.wait_warm(worker)
    bench.log(f"both pools warm after {time.monotonic() - started:.1f}s; {s.warmup_jobs} warm-up job(s) each")
    await bench.run_jobs(s.warmup_jobs, "warmup")
    bench.log(f"measuring {s.jobs} jobs per worker, one at a time")
    cpu_before, jobs_started = psutil.cpu_times(), time.monotonic()
    samples = await bench.run_jobs(s.jobs, "")
    busy = _busy_seconds(cpu_before, psutil.cpu_times()) / (time.monotonic() - jobs_started)
    bench.log(f"sampling memory after {s.settle:g}s idle")
    memory = await bench.memory()
    info = await bench.ours_info()
    memory["ours"]["idle_pids_reported"] = sorted(info.get("idle_pids", []))
    memory["ours"]["idle_pids_counted"] = sorted(
        p["pid"] for p in memory["ours"]["processes"] if p["role"] == "idle"
    )
    return {
        "samples": samples,
        "memory": memory,
        "phase_seconds": round(time.monotonic() - started, 2),
        # other work on the machine (the benchmark needs ~1.5 cores of its own): context for the numbers
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "machine_cores_busy": round(busy, 2),
    }


async def _run(settings: WorkerBenchSettings, root: Path, log: Log) -> dict[str, Any]:
    server_settings = ServerProcessSettings(extra_args=("--dispatch-deadline", "120"))
    with ServerProcess(server_settings) as server:
        bench = WorkerBench(settings, server, api.LiveKitAPI(server.url, "devkey", "secret"), root, log)
        try:
            measured = await _measure(bench)
        except HarnessError as exc:
            tails = "\n".join(f"--- {k} worker log ---\n{w.log_tail()}" for k, w in bench.workers.items())
            raise HarnessError(f"{exc}\n{tails}") from None
        finally:
            await bench.api.aclose()
            problems = bench.stop_workers()
        commands = {k: w.command for k, w in bench.workers.items()}
    return build_result(measured, commands, problems, asdict(settings))


def run_worker_bench(settings: WorkerBenchSettings, log: Log = lambda text: None) -> dict[str, Any]:
    """Run the whole benchmark (server, both workers, jobs, memory) and return the JSON-ready result."""
    ignore_short_hmac_key_warning()
    if settings.workdir is not None:
        settings.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(settings, settings.workdir, log))
    with tempfile.TemporaryDirectory(prefix="agentdispatch-bench-worker-") as tmp:
        return asyncio.run(_run(settings, Path(tmp), log))
