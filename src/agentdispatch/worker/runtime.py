"""The worker: wires options, load, slots, offers, the process pool, jobs, the connection and HTTP.

One rule decides both the status reported to the server and the answer to an offer (`refusal()`):
draining, job processes that cannot start (prewarm failing), a fresh worker whose first process is not warm
yet, at max_jobs, or load >= load_threshold means FULL and "decline at once".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import agent

from .. import __version__
from ..protocol import WorkerError
from ..util import TaskSet
from ..util.aio import wait_for
from .connection import ConnectionSettings, WorkerConnection
from .http import HttpServer
from .ipc import AcceptArguments, ChildConfig
from .jobs import JS_FAILED, JS_RUNNING, JobManager
from .load import CpuSampler, LoadMonitor
from .metrics import JobMetrics
from .offers import ASSIGNMENT_TIMEOUT, JobRequest, OfferAnswer, SlotTable, decide
from .options import ResolvedOptions, load_fnc_takes_worker
from .proc_pool import BackoffPolicy, ProcPool
from .supervised import ProcSettings, SupervisedProc

log = logging.getLogger("agentdispatch.worker")

WS_AVAILABLE = agent.WorkerStatus.WS_AVAILABLE
WS_FULL = agent.WorkerStatus.WS_FULL


@dataclass(frozen=True)
class Tuning:
    """Internal timings (not user options); tests shorten them."""

    status_interval: float = 2.5
    load_interval: float = 0.5
    memory_interval: float = 1.0
    term_grace: float = 2.0
    assignment_timeout: float = ASSIGNMENT_TIMEOUT
    pool_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    reconnect_base: float = 0.5
    reconnect_cap: float = 15.0


@dataclass
class OfferStats:
    accepted: int = 0
    declined: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class _Awaiting:
    accept: AcceptArguments
    timer: asyncio.TimerHandle


class Worker:
    """A running worker. `await run()` serves until stopped; `drain()` / `stop()` / `abort()` end it."""

    def __init__(
        self, options: ResolvedOptions, tuning: Tuning | None = None, sampler: CpuSampler | None = None
    ):
        self.opts = options
        self.tuning = tuning or Tuning()
        self.draining = False
        self._closing = False
        self._closed = False
        self._tasks = TaskSet("worker")
        self.slots = SlotTable(options.max_jobs)
        takes_worker = options.load_fnc is not None and load_fnc_takes_worker(options.load_fnc)
        self.load = LoadMonitor(options.load_fnc, self, options.load_timeout, takes_worker, sampler)
        self.pool = ProcPool(self._new_proc, self._pool_target(), self.tuning.pool_backoff, self._pool_state)
        self._pool_problem: str | None = None
        self.jobs = JobManager(self.pool, self.slots, self._report_job, self._changed)
        self.job_metrics = JobMetrics()  # per-job memory, CPU and durations on /metrics
        self.conn = WorkerConnection(
            self._connection_settings(), self._on_registered, self._on_message, self._on_disconnected
        )
        self.http = HttpServer(
            options.host, options.port, self.info, lambda: self.conn.connected, (self.job_metrics,)
        )
        self.offers = OfferStats()
        self.aborted = False
        self._awaiting: dict[str, _Awaiting] = {}
        self._unsent: list[agent.UpdateJobStatus] = []
        self._status_dirty = asyncio.Event()
        self._stopped = asyncio.Event()
        self._fatal: WorkerError | None = None

    # -- construction helpers --------------------------------------------------------------------------
    def _connection_settings(self) -> ConnectionSettings:
        o = self.opts
        return ConnectionSettings(
            url=o.ws_url,
            api_key=o.api_key,
            api_secret=o.api_secret,
            agent_name=o.agent_name,
            job_type=o.job_type,
            permissions=o.permissions.to_proto(),
            version=__version__,
            worker_token=o.worker_token,
            max_retry=o.max_retry,
            backoff_base=self.tuning.reconnect_base,
            backoff_cap=self.tuning.reconnect_cap,
        )

    def _new_proc(self) -> SupervisedProc:
        o = self.opts
        child = ChildConfig(o.entrypoint, o.prewarm, o.log_level, tuple(sys.path), os.getpid())
        return SupervisedProc(
            ProcSettings(
                child=child,
                mp_context=o.multiprocessing_context,
                initialize_timeout=o.initialize_process_timeout,
                shutdown_timeout=o.shutdown_process_timeout,
                term_grace=self.tuning.term_grace,
                memory_warn_mb=o.job_memory_warn_mb,
                memory_limit_mb=o.job_memory_limit_mb,
                memory_interval=self.tuning.memory_interval,
            )
        )

    # -- the one availability rule ----------------------------------------------------------------------
    def refusal(self) -> str | None:
        """Why the worker takes no new job right now, or None when it is available."""
        if self.draining or self._closing:
            return "draining"
        if self.pool.failing:
            return f"job processes cannot start: {self.pool.failing.splitlines()[0]}"
        if self.opts.num_idle_processes > 0 and not self.pool.warm:
            return "starting job processes"
        if self.slots.full:
            return "at max_jobs"
        if self.load.value >= self.opts.load_threshold:
            return "load above threshold"
        return None

    @property
    def status(self) -> int:
        return WS_FULL if self.refusal() is not None else WS_AVAILABLE

    @property
    def id(self) -> str:
        return self.conn.worker_id

    def _pool_target(self) -> int:
        target = self.opts.num_idle_processes
        if self.opts.max_jobs is not None:  # even at max_jobs: warm for the jobs it takes next
            target = min(target, self.opts.max_jobs)
        if self.load.value >= self.opts.load_threshold:
            target = min(target, 1)  # loaded: keep one warm for when load drops, free the rest
        if self.draining or self._closing:
            target = 0
        return max(0, target)

    def _pool_state(self) -> None:
        """The pool started failing, recovered, or got its first warm process: log it, report status."""
        problem = self.pool.failing or None
        if problem != self._pool_problem:
            if problem:
                log.error("job processes cannot start (%s): reporting FULL until one starts", problem)
            else:
                log.info("job processes start again: taking jobs")
            self._pool_problem = problem
        self._changed()

    def _changed(self) -> None:
        """Slots, drain state or availability changed: resize the pool, report status soon."""
        self.pool.set_target(self._pool_target())
        self._status_dirty.set()

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        log.info("starting worker", extra={"options": self.opts.summary()})
        await self.http.start()
        self.pool.start()
        self._tasks.spawn(self._load_loop(), "load")
        self._tasks.spawn(self._status_loop(), "status")
        self._tasks.spawn(self._connect(), "connection")

    async def run(self) -> None:
        """Serve until stop(), drain() completes, abort(), or the connection gives up (WorkerError)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()
        if self._fatal is not None:
            raise self._fatal

    async def _connect(self) -> None:
        try:
            await self.conn.run()
        except WorkerError as exc:  # serve() logs it (one line) and exits non-zero
            self._fatal = exc
            self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()

    async def drain(self, timeout: float | None = None) -> None:
        """Take no new jobs, let running ones finish (up to drain_timeout), then stop."""
        if self.draining:
            return
        timeout = self.opts.drain_timeout if timeout is None else timeout
        self.draining = True
        log.info("draining: declining new jobs, waiting up to %gs for %d job(s)", timeout, self.slots.used)
        self._changed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._awaiting or len(self.jobs):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("drain timeout: stopping %d remaining job(s)", len(self.jobs))
                self.jobs.interrupt_all(f"drain timeout {timeout:g}s")
                break
            if len(self.jobs):
                await self.jobs.wait_empty(remaining)
            else:
                await asyncio.sleep(min(0.1, remaining))
        self._stopped.set()

    def begin_drain(self) -> None:
        """Start `drain()` in the background (from a signal handler)."""
        self._tasks.spawn(self.drain(), "drain")

    def abort(self) -> None:
        """Kill every job process tree now (second signal)."""
        log.warning("aborting: killing all job processes")
        self.aborted = True
        self.jobs.interrupt_all("worker aborted")
        self.jobs.kill_all()
        self.pool.kill_all()
        self._stopped.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for job_id, pending in list(self._awaiting.items()):
            pending.timer.cancel()
            self.slots.release(job_id)
        self._awaiting.clear()
        self._changed()
        self.jobs.interrupt_all("worker stopped")
        grace = self.opts.shutdown_process_timeout + self.tuning.term_grace + 1.0
        await self.jobs.wait_empty(grace)
        await self.pool.aclose()  # fails jobs still waiting for a process
        await self.jobs.wait_empty()
        await self._send_status()
        await self.conn.close()
        await self._tasks.aclose()
        await self.jobs.aclose()
        await self.http.aclose()
        log.info("worker stopped", extra={"worker_id": self.id} if self.id else {"registered": False})

    # -- periodic loops --------------------------------------------------------------------------------
    async def _load_loop(self) -> None:
        while True:
            before = self.refusal()
            await self.load.sample()
            if (self.refusal() is None) != (before is None):
                self._changed()
            else:
                self.pool.set_target(self._pool_target())
            await asyncio.sleep(self.tuning.load_interval)

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_for(self._status_dirty.wait(), self.tuning.status_interval)
            self._status_dirty.clear()
            await self._send_status()

    async def _send_status(self) -> None:
        if not self.conn.connected:
            return
        update = agent.UpdateWorkerStatus(
            status=self.status,  # type: ignore[arg-type]
            load=self.load.value,
            job_count=len(self.jobs),
            draining=self.draining or self._closing,
        )
        await self.conn.send(agent.WorkerMessage(update_worker=update))

    # -- server messages ---------------------------------------------------------------------------------
    def _on_message(self, msg: agent.ServerMessage) -> None:
        which = msg.WhichOneof("message")
        if which == "availability":
            self._on_offer(msg.availability)
        elif which == "assignment":
            self._on_assignment(msg.assignment)
        elif which == "termination":
            self._on_termination(msg.termination.job_id)
        else:
            log.debug("ignoring server message %s", which)

    def _on_offer(self, req: agent.AvailabilityRequest) -> None:
        job = req.job
        why = self.refusal()
        if why is None and not self.slots.reserve(job.id):
            why = "at max_jobs"
        if why is not None:
            self.offers.declined[why] += 1
            log.debug("declining job at once: %s", why, extra={"job_id": job.id})
            self._tasks.spawn(self._answer(job.id, OfferAnswer(False, why=why)), f"decline:{job.id}")
            return
        self._changed()
        self._tasks.spawn(self._decide(job, req.resuming), f"offer:{job.id}")

    async def _decide(self, job: agent.Job, resuming: bool) -> None:
        request = JobRequest(job, resuming)
        answer = await decide(request, self.opts.request_fnc, self.opts.request_timeout, self._tasks)
        if answer.available and (self.draining or self._closing):
            answer = OfferAnswer(False, why="draining")
        if answer.available and answer.accept is not None:
            timer = asyncio.get_running_loop().call_later(
                self.tuning.assignment_timeout, self._assignment_timeout, job.id
            )
            self._awaiting[job.id] = _Awaiting(answer.accept, timer)
            self.offers.accepted += 1
        else:
            self.slots.release(job.id)
            self.offers.declined[answer.why or "declined"] += 1
            self._changed()
        if answer.available and self.refusal() is not None:
            await self._send_status()  # FULL reaches the server before the acceptance that filled us
        if not await self._answer(job.id, answer) and job.id in self._awaiting:
            self._awaiting.pop(job.id).timer.cancel()
            self.slots.release(job.id)
            self._changed()

    async def _answer(self, job_id: str, answer: OfferAnswer) -> bool:
        return await self.conn.send(agent.WorkerMessage(availability=answer.to_proto(job_id)))

    def _assignment_timeout(self, job_id: str) -> None:
        if self._awaiting.pop(job_id, None) is not None:
            log.warning(
                "no assignment %gs after accepting; slot released",
                self.tuning.assignment_timeout,
                extra={"job_id": job_id},
            )
            self.slots.release(job_id)
            self._changed()

    def _on_assignment(self, assignment: agent.JobAssignment) -> None:
        job = assignment.job
        pending = self._awaiting.pop(job.id, None)
        if pending is not None:
            pending.timer.cancel()
            accept = pending.accept
        elif job.id in self.jobs:
            log.warning("duplicate assignment ignored", extra={"job_id": job.id})
            return
        elif self.refusal() is None and self.slots.reserve(job.id):
            log.info("running a late or unsolicited assignment", extra={"job_id": job.id})
            accept = AcceptArguments(identity=f"agent-{job.id}")
        else:
            log.warning("assignment without a free slot; reporting it failed", extra={"job_id": job.id})
            update = agent.UpdateJobStatus(job_id=job.id, status=JS_FAILED, error="worker had no free slot")
            self._tasks.spawn(self._report_job(update), f"refuse:{job.id}")
            return
        url = assignment.url or self.opts.ws_url
        self.jobs.start(job, url, assignment.token, self.conn.worker_id, accept)
        self._changed()

    def _on_termination(self, job_id: str) -> None:
        pending = self._awaiting.pop(job_id, None)
        if pending is not None:
            pending.timer.cancel()
            self.slots.release(job_id)
            self._changed()
        elif not self.jobs.terminate(job_id, "terminated by the server"):
            log.debug("termination for an unknown job", extra={"job_id": job_id})

    # -- job statuses and reconnection ---------------------------------------------------------------------
    async def _report_job(self, update: agent.UpdateJobStatus) -> None:
        self.job_metrics.on_update(update, self.jobs.jobs())
        if not await self.conn.send(agent.WorkerMessage(update_job=update)):
            log.info(
                "not connected: job status kept for the next connection", extra={"job_id": update.job_id}
            )
            self._unsent.append(update)

    async def _on_registered(self, worker_id: str) -> None:
        unsent, self._unsent = self._unsent, []
        ids = list(dict.fromkeys([*self.jobs.ids(), *(u.job_id for u in unsent)]))
        if self.conn.registrations > 1 and ids:
            log.info("re-registered: migrating %d job(s)", len(ids), extra={"worker_id": worker_id})
            described = [r.job for r in self.jobs.jobs()]  # lets a restarted server adopt them
            migrate = agent.MigrateJobRequest(job_ids=ids, jobs=described)
            await self.conn.send(agent.WorkerMessage(migrate_job=migrate))
        for update in unsent:
            if update.status == JS_RUNNING and update.job_id not in self.jobs:
                continue
            await self._report_job(update)
        self._status_dirty.set()

    def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("disconnected from the server; %d job(s) keep running", len(self.jobs))

    # -- introspection -------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        threshold = self.opts.load_threshold
        return {
            "id": self.id,
            "agent_name": self.opts.agent_name,
            "version": __version__,
            "registered": self.conn.connected,
            "status": "available" if self.refusal() is None else "full",
            "full_because": self.refusal(),
            "draining": self.draining,
            "load": self.load.value,
            "load_problem": self.load.problem.name if self.load.problem else None,
            "load_threshold": None if math.isinf(threshold) else threshold,
            "max_jobs": self.opts.max_jobs,
            "slots_used": self.slots.used,
            "jobs": [rj.info() for rj in self.jobs.jobs()],
            "idle_pids": self.pool.idle_pids(),
            "pool": self.pool.statistics(),
            "offers": {"accepted": self.offers.accepted, "declined": dict(self.offers.declined)},
            "http_url": self.http.url,
        }
