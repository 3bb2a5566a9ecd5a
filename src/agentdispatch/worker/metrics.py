"""Per-job numbers on the worker's `/metrics`: job process memory and CPU, job durations by outcome.

`JobMetrics` is told when a job's process starts running the job and when the job ends; it is a
prometheus-client collector, so memory and CPU are read from the job process trees (psutil) at scrape
time, never on the job path. Labels are bounded (`outcome`); no job id ever becomes a label.
CPU is sampled at scrapes: what a job burns after the last scrape before it ends is not counted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import psutil
from livekit.protocol import agent
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
OUTCOMES = {
    agent.JobStatus.JS_SUCCESS: "success",
    agent.JobStatus.JS_FAILED: "failed",
    agent.JobStatus.JS_CANCELLED: "cancelled",
}


class _HasPid(Protocol):
    @property
    def pid(self) -> int | None: ...


class _JobLike(Protocol):
    """What the worker's RunningJob offers: its id and its process."""

    @property
    def id(self) -> str: ...

    @property
    def proc(self) -> _HasPid | None: ...


@dataclass
class _Running:
    pid: int
    started: float
    cpu_seen: float = 0.0
    proc: psutil.Process | None = None


@dataclass(frozen=True)
class TreeUsage:
    memory_bytes: int  # USS over the process and its descendants (RSS where USS cannot be read)
    cpu_seconds: float  # user + system of the process and its live descendants


def tree_usage(proc: psutil.Process) -> TreeUsage | None:
    """What a process tree uses now; None once the process is gone."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    memory, cpu = 0, 0.0
    for p in members:
        with contextlib.suppress(psutil.Error):
            try:
                memory += p.memory_full_info().uss
            except psutil.AccessDenied:
                memory += p.memory_info().rss
            times = p.cpu_times()
            cpu += times.user + times.system
    return TreeUsage(memory, cpu)


class JobMetrics(Collector):
    """Register on the worker's CollectorRegistry; call `started` / `ended` from the job manager."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._running: dict[str, _Running] = {}
        self._cpu_done = 0.0
        self.durations = Histogram(
            "agentdispatch_worker_job_duration_seconds",
            "Seconds from JS_RUNNING to the job's end, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )

    def on_update(self, update: agent.UpdateJobStatus, jobs: Iterable[_JobLike]) -> None:
        """The worker reports a job status: JS_RUNNING starts the clock, an end observes the duration."""
        if update.status == agent.JobStatus.JS_RUNNING:
            proc = next((j.proc for j in jobs if j.id == update.job_id), None)
            self.started(update.job_id, proc.pid if proc is not None else None)
        elif update.status in OUTCOMES:
            self.ended(update.job_id, update.status)

    def started(self, job_id: str, pid: int | None) -> None:
        if pid is None:
            return
        self._running[job_id] = _Running(pid, self._clock())

    def ended(self, job_id: str, status: int) -> None:
        job = self._running.pop(job_id, None)
        if job is None:
            return  # never ran (no process, or failed before JS_RUNNING)
        self._cpu_done += job.cpu_seen
        outcome = OUTCOMES.get(status, "failed")  # type: ignore[call-overload]
        self.durations.labels(outcome).observe(max(0.0, self._clock() - job.started))

    def collect(self) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "agentdispatch_worker_jobs_memory_bytes",
            "Memory (USS) of all running job process trees together.",
        )
        largest = GaugeMetricFamily(
            "agentdispatch_worker_job_memory_max_bytes",
            "Memory (USS) of the largest running job process tree.",
        )
        cpu = CounterMetricFamily(
            "agentdispatch_worker_jobs_cpu_seconds",
            "CPU seconds (user + system) used by job process trees, sampled at scrapes.",
        )
        total, peak = 0, 0
        for job in list(self._running.values()):
            usage = self._usage(job)
            if usage is None:
                continue
            total += usage.memory_bytes
            peak = max(peak, usage.memory_bytes)
            job.cpu_seen = max(job.cpu_seen, usage.cpu_seconds)
        memory.add_metric([], total)
        largest.add_metric([], peak)
        cpu.add_metric([], self._cpu_done + sum(j.cpu_seen for j in self._running.values()))
        running = GaugeMetricFamily("agentdispatch_worker_jobs_running", "Jobs whose process runs the job.")
        running.add_metric([], len(self._running))
        yield from (memory, largest, cpu, running)
        yield from self.durations.collect()

    @staticmethod
    def _usage(job: _Running) -> TreeUsage | None:
        if job.proc is None:
            try:
                job.proc = psutil.Process(job.pid)
            except psutil.Error:
                return None
        return tree_usage(job.proc)
