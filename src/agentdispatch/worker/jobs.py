"""Running jobs on the worker side: take a prewarmed process, launch, report RUNNING, report the end.

Each job holds a slot from acceptance until its process has exited; then the slot is released and the
final status (JS_SUCCESS, or JS_FAILED with the error text) is handed to `report` before the job is
forgotten (drain waits for that, so final statuses go out before the socket closes).

Honest endings: a job the worker cuts short (drain timeout, worker stopped, memory limit, killed after the
shutdown timeout, no process could start) is JS_FAILED with an error starting ``interrupted (`` and naming
the cause, e.g. ``interrupted (drain timeout 3s)``; the server resumes such jobs per restart policy. A job
that finished on its own before the worker's request reached it keeps its own verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from livekit.protocol import agent

from ..protocol import WorkerError
from ..util import TaskSet
from ..util.aio import wait_for
from .ipc import AcceptArguments, StartJob
from .offers import SlotTable
from .proc_pool import ProcPool
from .supervised import InitError, ProcExit, SupervisedProc

log = logging.getLogger("agentdispatch.worker.jobs")

JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS
JS_FAILED = agent.JobStatus.JS_FAILED

REFILL_AFTER_START = 0.02  # seconds after a job started before its process is replaced in the pool

Reporter = Callable[[agent.UpdateJobStatus], Awaitable[None]]


@dataclass
class RunningJob:
    job: agent.Job
    accept: AcceptArguments
    proc: SupervisedProc | None = None
    status: int = agent.JobStatus.JS_PENDING
    stop_reason: str = ""
    interrupt: str = ""  # the worker's own reason to cut the job short, e.g. "drain timeout 3s"

    @property
    def id(self) -> str:
        return self.job.id

    def info(self) -> dict[str, object]:
        return {
            "id": self.job.id,
            "room": self.job.room.name,
            "status": agent.JobStatus.Name(self.status),
            "pid": self.proc.pid if self.proc else None,
            "stopping": bool(self.stop_reason),
        }


class JobManager:
    def __init__(
        self, pool: ProcPool, slots: SlotTable, report: Reporter, on_change: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._slots = slots
        self._report = report
        self._on_change = on_change
        self._jobs: dict[str, RunningJob] = {}
        self._tasks = TaskSet("jobs")
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def ids(self) -> list[str]:
        return list(self._jobs)

    def jobs(self) -> list[RunningJob]:
        return list(self._jobs.values())

    def start(self, job: agent.Job, url: str, token: str, worker_id: str, accept: AcceptArguments) -> None:
        rj = RunningJob(job, accept)
        self._jobs[job.id] = rj
        self._empty.clear()
        start = StartJob(job.SerializeToString(), url, token, worker_id, accept)
        proc = self._pool.acquire_nowait()
        launched = proc is not None and self._launch(rj, proc, start)  # warm path: no event-loop hop
        self._tasks.spawn(self._run(rj, start, launched), f"job:{job.id}")

    def _launch(self, rj: RunningJob, proc: SupervisedProc, start: StartJob) -> bool:
        rj.proc = proc
        try:
            proc.launch(start, rj.id)
        except WorkerError as exc:
            log.warning("job process unusable: %s", exc, extra={"job_id": rj.id, "pid": proc.pid})
            rj.proc = None
            return False
        if rj.stop_reason:
            proc.request_shutdown(rj.stop_reason)
        return True

    async def _run(self, rj: RunningJob, start: StartJob, launched: bool) -> None:
        extra = {"job_id": rj.id, "room": rj.job.room.name}
        while not launched:
            cannot = self._pool.failing
            if not cannot:
                try:
                    candidate = await self._pool.acquire()
                except InitError as exc:
                    cannot = str(exc)
            if cannot:  # handed back at once: the server can place it elsewhere
                log.warning("job process could not start; handing the job back: %s", cannot, extra=extra)
                await self._finish(rj, JS_FAILED, interrupted(f"job process could not start: {cannot}"))
                return
            launched = self._launch(rj, candidate, start)
        proc = rj.proc
        if proc is None:
            raise WorkerError(f"job {rj.id} launched without a process")
        started = await proc.wait_started()
        # fork the next process once this job's entrypoint is under way, not while it is starting
        asyncio.get_running_loop().call_later(REFILL_AFTER_START, self._pool.refill)
        if started:
            rj.status = JS_RUNNING
            log.info("job running", extra={**extra, "pid": proc.pid})
            await self._report(agent.UpdateJobStatus(job_id=rj.id, status=JS_RUNNING))
        result = await proc.wait_exit()
        status, error = verdict(rj, result)
        if error:
            log.warning("job failed: %s", error.splitlines()[0], extra={**extra, "pid": proc.pid})
        else:
            log.info("job ended (%s)", result.reason or "done", extra={**extra, "pid": proc.pid})
        await self._finish(rj, status, error)

    async def _finish(self, rj: RunningJob, status: int, error: str) -> None:
        """Report the final status, then forget the job. The slot is free before the report goes out: the
        server offers the next job as soon as it reads it, and the process has already exited."""
        rj.status = status
        self._slots.release(rj.id)
        try:
            await self._report(agent.UpdateJobStatus(job_id=rj.id, status=status, error=error))  # type: ignore[arg-type]
        finally:
            self._jobs.pop(rj.id, None)
            if not self._jobs:
                self._empty.set()
            self._on_change()

    def terminate(self, job_id: str, reason: str) -> bool:
        rj = self._jobs.get(job_id)
        if rj is None:
            return False
        self._stop(rj, reason)
        return True

    def _stop(self, rj: RunningJob, reason: str) -> None:
        if not rj.stop_reason:
            rj.stop_reason = reason
        if rj.proc is not None:
            rj.proc.request_shutdown(rj.stop_reason)

    def interrupt_all(self, cause: str) -> None:
        """Cut every job short for the worker's own reason (`cause`, e.g. "drain timeout 3s")."""
        for rj in list(self._jobs.values()):
            if not rj.interrupt and not rj.stop_reason:
                rj.interrupt = cause
            self._stop(rj, interrupted(cause))

    def kill_all(self) -> None:
        for rj in list(self._jobs.values()):
            if rj.proc is not None:
                rj.proc.kill_now()

    async def wait_empty(self, timeout: float | None = None) -> bool:
        """True once no job is left (False on timeout)."""
        try:
            await wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        await self._tasks.aclose()


def interrupted(cause: str) -> str:
    """The error of a job the worker cut short; the server keys its restart policy on this prefix."""
    return f"interrupted ({cause})"


def verdict(rj: RunningJob, result: ProcExit) -> tuple[int, str]:
    """The final status of a job whose process exited: its own verdict, unless the worker cut it short."""
    causes = []
    if result.memory:
        causes.append(result.memory)
    elif rj.interrupt and result.ended_reason in (None, rj.stop_reason):
        causes.append(rj.interrupt)  # ended because we asked (or never reported): not finished
    if result.killed and result.ended_reason is None:
        causes.append(result.killed)
    if causes:
        return JS_FAILED, interrupted("; ".join(causes))
    if result.ended_reason is None and result.exitcode is not None and result.exitcode < 0:
        # killed by a signal from outside (OOM killer, an operator): cut short, not a bug in the agent
        return JS_FAILED, interrupted(result.error.removesuffix(" without reporting an end"))
    if result.error:
        return JS_FAILED, result.error
    return JS_SUCCESS, ""
