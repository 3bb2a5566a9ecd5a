"""The job lifecycle: queue -> offer -> assign -> run -> end. Never drops a job silently.

Placement asks the registry for the worker with the lowest projected load that this job has not
been offered to yet. No candidate: the job waits in a bounded FIFO per worker key until a matching
worker becomes available or its dispatch deadline passes (then it ends FAILED, reason visible).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import agent, agent_dispatch

from ..protocol import JobTokenRequest, KeyPair, TwirpError, mint_job_token
from ..util import SYSTEM_CLOCK, Clock, TaskSet
from .config import ServerConfig
from .registry import WorkerRegistry
from .session import ANY_DEPLOYMENT, WorkerKey, WorkerSession, job_key
from .store import Store

log = logging.getLogger("agentdispatch.server.dispatcher")

JS_PENDING = agent.JobStatus.JS_PENDING
JS_RUNNING = agent.JobStatus.JS_RUNNING
JS_SUCCESS = agent.JobStatus.JS_SUCCESS
JS_FAILED = agent.JobStatus.JS_FAILED
JS_CANCELLED = agent.JobStatus.JS_CANCELLED
JSR_UNSPECIFIED = agent.JobStateReason.JSR_UNSPECIFIED
JSR_RETRYING = agent.JobStateReason.JSR_RETRYING
JSR_NO_CAPACITY = agent.JobStateReason.JSR_NO_CAPACITY
JRP_NEVER = agent_dispatch.JobRestartPolicy.JRP_NEVER
ENDED = (JS_SUCCESS, JS_FAILED, JS_CANCELLED)
JobListener = Callable[[agent.Job], None]


@dataclass(eq=False)
class PendingJob:
    """A job not yet assigned: queued or being offered."""

    job: agent.Job
    key: WorkerKey
    deadline: float
    resuming: bool = False
    tried: set[str] = field(default_factory=set)
    offered_to: WorkerSession | None = None
    offer_timer: asyncio.TimerHandle | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    expired: bool = False
    pinned: bool = False  # simulated jobs go to the worker that asked, nowhere else


class Dispatcher:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        registry: WorkerRegistry,
        keys: KeyPair,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._keys = keys
        self._clock = clock
        self._pending: dict[str, PendingJob] = {}
        self._queues: dict[WorkerKey, dict[str, PendingJob]] = {}
        self._listeners: list[JobListener] = []
        self._restarts: dict[str, int] = {}
        self._tasks = TaskSet("dispatcher")

    # -- observation -------------------------------------------------------------------------
    def add_listener(self, listener: JobListener) -> None:
        """Called with the job after every state change (metrics, demo views, webhooks)."""
        self._listeners.append(listener)

    def _emit(self, job: agent.Job) -> None:
        for listener in self._listeners:
            listener(job)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def queued_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def check_capacity(self, extra: int = 1) -> None:
        if len(self._pending) + extra > self._config.queue_limit:
            raise TwirpError(
                "resource_exhausted",
                f"{len(self._pending)} jobs already wait for a worker (limit {self._config.queue_limit})",
            )

    # -- submission ----------------------------------------------------------------------------
    async def submit(self, job: agent.Job, deadline: float | None = None, resuming: bool = False) -> None:
        """Take a new (or resumed) job and place it; it is stored before this returns."""
        pj = await self._admit(job, deadline, resuming)
        await self._place(pj)

    async def offer_to(self, job: agent.Job, worker: WorkerSession) -> None:
        """Offer a job to one given worker only (simulate_job)."""
        pj = await self._admit(job, None, False)
        pj.pinned = True
        await self._offer(pj, worker)

    async def _admit(self, job: agent.Job, deadline: float | None, resuming: bool) -> PendingJob:
        self.check_capacity()
        job.state.status = JS_PENDING
        job.state.updated_at = self._clock.wall_ns()
        await self._store.add_job(job)
        wait = self._config.dispatch_deadline if deadline is None else deadline
        pj = PendingJob(job=job, key=job_key(job), deadline=self._clock.monotonic() + wait, resuming=resuming)
        self._pending[job.id] = pj
        pj.deadline_timer = asyncio.get_running_loop().call_later(wait, self._on_deadline_timer, job.id)
        self._emit(job)
        return pj

    def is_pending(self, job_id: str) -> bool:
        return job_id in self._pending

    async def cancel_pending(self, job_id: str) -> None:
        """Stop placing a job without ending it (its worker came back and kept it)."""
        pj = self._pending.get(job_id)
        if pj is None:
            return
        if pj.offered_to is not None:
            self._clear_offer(pj, pj.offered_to)
        self._forget_pending(pj)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.spawn(coro, name)

    async def _place(self, pj: PendingJob) -> None:
        if pj.pinned:
            await self._finish_pending(pj, JS_FAILED, "simulated job was not accepted")
            return
        if pj.expired:
            await self._fail_no_capacity(pj)
            return
        worker = self._registry.best(pj.key, exclude=pj.tried)
        if worker is None:
            pj.tried.clear()
            self._queues.setdefault(pj.key, {})[pj.job.id] = pj
            log.debug("job queued", extra={"job_id": pj.job.id, "agent_name": pj.job.agent_name})
            return
        await self._offer(pj, worker)

    async def _offer(self, pj: PendingJob, worker: WorkerSession) -> None:
        job_id = pj.job.id
        pj.tried.add(worker.id)
        pj.offered_to = worker
        worker.offers.add(job_id)
        worker.load.pending_offers += 1
        self._registry.refresh(worker)
        pj.offer_timer = asyncio.get_running_loop().call_later(
            self._config.offer_timeout, self._on_offer_timer, job_id, worker.id
        )
        msg = agent.ServerMessage(availability=agent.AvailabilityRequest(job=pj.job, resuming=pj.resuming))
        if not await worker.send(msg):
            await self._withdraw_offer(pj, worker)

    def _clear_offer(self, pj: PendingJob, worker: WorkerSession, rerank: bool = True) -> None:
        if pj.offer_timer is not None:
            pj.offer_timer.cancel()
            pj.offer_timer = None
        pj.offered_to = None
        if pj.job.id in worker.offers:
            worker.offers.discard(pj.job.id)
            worker.load.pending_offers -= 1
            if rerank:
                self._registry.refresh(worker)

    async def _withdraw_offer(self, pj: PendingJob, worker: WorkerSession) -> None:
        """The offer is void (timeout, refusal, lost worker): try the next worker."""
        self._clear_offer(pj, worker)
        if self._pending.get(pj.job.id) is pj:
            await self._place(pj)

    # -- worker answers -----------------------------------------------------------------------
    async def on_availability(self, worker: WorkerSession, resp: agent.AvailabilityResponse) -> None:
        pj = self._pending.get(resp.job_id)
        if pj is None and resp.job_id in worker.active_jobs:
            log.info(
                "repeated answer for a job this worker runs",
                extra={"job_id": resp.job_id, "worker_id": worker.id},
            )
            return
        if pj is None or pj.offered_to is not worker:
            # late or unknown answer: the job went elsewhere, ended, or never existed
            log.info(
                "late availability answer ignored",
                extra={"job_id": resp.job_id, "worker_id": worker.id, "available": resp.available},
            )
            if resp.available:
                await worker.send(agent.ServerMessage(termination=agent.JobTermination(job_id=resp.job_id)))
            return
        # an accept re-ranks the worker once, in _assign (offer cleared and job added together)
        self._clear_offer(pj, worker, rerank=not resp.available)
        if resp.available:
            await self._assign(pj, worker, resp)
        elif resp.terminate:
            await self._finish_pending(
                pj, JS_FAILED, f"worker {worker.id} refused the job and asked to terminate it"
            )
        else:
            await self._place(pj)

    async def _assign(self, pj: PendingJob, worker: WorkerSession, resp: agent.AvailabilityResponse) -> None:
        job = pj.job
        self._forget_pending(pj)
        reg = worker.registration
        identity = resp.participant_identity or f"agent-{job.id}"
        token = mint_job_token(
            self._keys,
            JobTokenRequest(
                room=job.room.name,
                identity=identity,
                name=resp.participant_name,
                metadata=resp.participant_metadata,
                attributes=dict(resp.participant_attributes),
                agent_name=reg.agent_name,
                permissions=reg.permissions,
            ),
        )
        now_ns = self._clock.wall_ns()
        state = job.state
        state.status = JS_RUNNING
        state.worker_id = worker.id
        state.participant_identity = identity
        state.started_at = now_ns
        state.updated_at = now_ns
        state.reason = JSR_UNSPECIFIED
        await self._store.update_job(job)
        worker.active_jobs.add(job.id)
        worker.load.since_report += 1
        self._registry.refresh(worker)
        self._emit(job)
        sent = await worker.send(
            agent.ServerMessage(
                assignment=agent.JobAssignment(job=job, url=self._config.public_url, token=token)
            )
        )
        if not sent:
            log.warning("assignment not delivered", extra={"job_id": job.id, "worker_id": worker.id})

    async def on_job_update(self, worker: WorkerSession, update: agent.UpdateJobStatus) -> None:
        job = await self._store.get_job(update.job_id)
        if job is None or job.state.worker_id != worker.id or job.state.status in ENDED:
            log.info(
                "job update ignored",
                extra={"job_id": update.job_id, "worker_id": worker.id, "status": update.status},
            )
            return
        if update.status == JS_RUNNING:
            job.state.status = JS_RUNNING
            job.state.updated_at = self._clock.wall_ns()
            await self._store.update_job(job)
            self._emit(job)
            return
        if update.status not in ENDED:
            return
        worker.active_jobs.discard(job.id)
        self._registry.refresh(worker)
        if update.status == JS_FAILED:
            await self.restart_or_fail(job, update.error or "job failed", worker.id)
        else:
            self._set_ended(job, update.status, update.error, 0)
            await self._store.update_job(job)
            self._emit(job)
        await self.worker_available(worker)

    async def restart_or_fail(self, job: agent.Job, error: str, failed_worker_id: str) -> None:
        """A running job failed or lost its worker: offer it again (resuming) or end it FAILED.

        Restarts follow the dispatch's restart policy and are bounded by `max_restarts`, so a job that
        crashes every worker ends FAILED with its last error instead of looping.
        """
        dispatch = await self._store.get_dispatch(job.dispatch_id)
        restarts = self._restarts.get(job.id, 0)
        never = (
            dispatch is None
            or dispatch.restart_policy == JRP_NEVER
            or bool(dispatch.state.deleted_at)
        )
        if never or restarts >= self._config.max_restarts:
            suffix = f" (after {restarts} restarts)" if restarts else ""
            await self._end_now(job, JS_FAILED, error + suffix, 0)
            return
        self._restarts[job.id] = restarts + 1
        job.state.error = f"restart {restarts + 1}/{self._config.max_restarts}: {error}"
        job.state.reason = JSR_RETRYING
        job.state.worker_id = ""
        log.warning("restarting job", extra={"job_id": job.id, "worker_id": failed_worker_id, "error": error})
        try:
            pj = await self._admit(job, None, resuming=True)
        except TwirpError:
            await self._end_now(job, JS_FAILED, f"{error}; restart refused: queue full", 0)
            return
        pj.tried.add(failed_worker_id)
        await self._place(pj)

    async def _end_now(self, job: agent.Job, status: int, error: str, reason: int) -> None:
        self._set_ended(job, status, error, reason)
        await self._store.update_job(job)
        self._emit(job)

    # -- capacity events ----------------------------------------------------------------------
    async def worker_available(self, worker: WorkerSession) -> None:
        """A worker registered, reported AVAILABLE, or freed a slot: serve waiting jobs."""
        if not worker.eligible or not self._queues:
            return
        for key in worker.registration.worker_keys():
            queue = self._queues.get(key)
            while queue:
                job_id = next(iter(queue))
                pj = queue[job_id]
                candidate = self._registry.best(key, exclude=pj.tried)
                if candidate is None:
                    break
                del queue[job_id]
                await self._offer(pj, candidate)
            if queue is not None and not queue:
                self._queues.pop(key, None)

    async def worker_gone(self, worker: WorkerSession) -> list[str]:
        """The connection ended: void its offers. Returns the ids of jobs it was running."""
        self._registry.remove(worker)
        for job_id in list(worker.offers):
            pj = self._pending.get(job_id)
            if pj is not None and pj.offered_to is worker:
                await self._withdraw_offer(pj, worker)
        worker.offers.clear()
        return list(worker.active_jobs)

    # -- endings -------------------------------------------------------------------------------
    async def end_job(self, job_id: str, status: int, error: str, reason: int = 0) -> agent.Job | None:
        """End a job from the server side (termination, deletion, lost worker). Idempotent."""
        pj = self._pending.get(job_id)
        if pj is not None:
            await self._finish_pending(pj, status, error, reason)
            return pj.job
        job = await self._store.get_job(job_id)
        if job is None or job.state.status in ENDED:
            return job
        worker = self._registry.get(job.state.worker_id)
        if worker is not None and job_id in worker.active_jobs:
            worker.active_jobs.discard(job_id)
            await worker.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
            self._registry.refresh(worker)
        await self._end_now(job, status, error, reason)
        return job

    def _set_ended(self, job: agent.Job, status: int, error: str, reason: int) -> None:
        self._restarts.pop(job.id, None)
        now_ns = self._clock.wall_ns()
        job.state.status = status  # type: ignore[assignment]
        job.state.error = error
        job.state.reason = reason  # type: ignore[assignment]
        job.state.ended_at = now_ns
        job.state.updated_at = now_ns

    async def _finish_pending(self, pj: PendingJob, status: int, error: str, reason: int = 0) -> None:
        if pj.offered_to is not None:
            self._clear_offer(pj, pj.offered_to)
        self._forget_pending(pj)
        self._set_ended(pj.job, status, error, reason)
        log.info("job ended before assignment", extra={"job_id": pj.job.id, "error": error})
        await self._store.update_job(pj.job)
        self._emit(pj.job)

    def _forget_pending(self, pj: PendingJob) -> None:
        self._pending.pop(pj.job.id, None)
        queue = self._queues.get(pj.key)
        if queue is not None:
            queue.pop(pj.job.id, None)
            if not queue:
                self._queues.pop(pj.key, None)
        if pj.deadline_timer is not None:
            pj.deadline_timer.cancel()
            pj.deadline_timer = None

    async def _fail_no_capacity(self, pj: PendingJob) -> None:
        dep = pj.key[3]
        where = f"agent_name={pj.job.agent_name!r}" + (
            "" if dep == ANY_DEPLOYMENT else f" deployment={dep!r}"
        )
        await self._finish_pending(
            pj,
            JS_FAILED,
            f"no worker available within {self._config.dispatch_deadline:g}s ({where})",
            JSR_NO_CAPACITY,
        )

    # -- timers (sync callbacks that hand off to tracked tasks) --------------------------------
    def _on_offer_timer(self, job_id: str, worker_id: str) -> None:
        pj = self._pending.get(job_id)
        if pj is None or pj.offered_to is None or pj.offered_to.id != worker_id:
            return
        log.info("offer timed out", extra={"job_id": job_id, "worker_id": worker_id})
        self._tasks.spawn(self._withdraw_offer(pj, pj.offered_to), f"offer-timeout:{job_id}")

    def _on_deadline_timer(self, job_id: str) -> None:
        pj = self._pending.get(job_id)
        if pj is None:
            return
        pj.deadline_timer = None
        pj.expired = True
        if pj.offered_to is None:
            self._tasks.spawn(self._fail_no_capacity(pj), f"deadline:{job_id}")

    async def aclose(self) -> None:
        for pj in list(self._pending.values()):
            for timer in (pj.offer_timer, pj.deadline_timer):
                if timer is not None:
                    timer.cancel()
        await self._tasks.aclose()
