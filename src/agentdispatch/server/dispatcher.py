"""The job lifecycle owner: queue -> offer -> assign -> run -> (orphan -> migrate | restart) -> end.

Every change of a job goes through this class and is emitted once on the EventBus (metrics,
webhooks, the dashboard and the job log subscribe there). Load bookkeeping is the registry's:
this class tells it what happened and never touches the numbers. Nothing here awaits a worker's
socket: messages are posted to the worker's outbox.

Placement asks the registry for the eligible worker with the lowest projected load that this job
has not been offered to yet. No candidate: the job waits in a FIFO per worker key until a matching
worker becomes available or its dispatch deadline passes (then it ends FAILED, reason visible).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from livekit.protocol import agent, agent_dispatch

from ..protocol import JobTokenRequest, KeyPair, TwirpError, mint_job_token
from ..util import SYSTEM_CLOCK, Clock, TaskSet
from .config import ServerConfig
from .events import EventBus, JobEvent, JobEventKind, WorkerEvent, WorkerEventKind
from .migration import MAX_MIGRATE, Owner, adopted_dispatch, bare_job, key_matches, migrate_refusal
from .registry import WorkerRegistry
from .restarts import Cause, RestartFacts, RoomAudience, cause_of, final_error, restart_refusal
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
K = JobEventKind
AudienceOf = Callable[[str], Awaitable[RoomAudience]]


@dataclass(eq=False)
class PendingJob:
    """A job not yet assigned: queued or being offered."""

    job: agent.Job
    key: WorkerKey
    size: int
    wait: float
    resuming: bool = False
    tried: set[str] = field(default_factory=set)
    offered_to: WorkerSession | None = None
    offer_timer: asyncio.TimerHandle | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    expired: bool = False
    pinned: bool = False  # simulated jobs go to the worker that asked, nowhere else


async def _nobody(room: str) -> RoomAudience:
    return RoomAudience(exists=True, humans_now=0, ever_had_humans=False)


class Dispatcher:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        registry: WorkerRegistry,
        keys: KeyPair,
        events: EventBus | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._keys = keys
        self._clock = clock
        self.events = events or EventBus()
        self._pending: dict[str, PendingJob] = {}
        self._pending_bytes = 0
        self._queues: dict[WorkerKey, dict[str, PendingJob]] = {}
        self._restarts: dict[str, int] = {}
        self._owners: dict[str, Owner] = {}
        self._orphans: dict[str, asyncio.TimerHandle] = {}
        self._backoff_timers: dict[str, asyncio.TimerHandle] = {}
        self._audience: AudienceOf = _nobody
        self._tasks = TaskSet("dispatcher")
        self._adopt_until = clock.monotonic() + config.adopt_window
        self._media_attempts: set[tuple[str, str]] = set()
        self._confirmed: set[str] = set()  # jobs whose worker reported JS_RUNNING in this run
        self.shutting_down = False

    def set_audience(self, audience: AudienceOf) -> None:
        """How the restart rule learns who is in a room (the room manager provides it)."""
        self._audience = audience

    # -- events ---------------------------------------------------------------------------------
    def _emit(self, kind: JobEventKind, job: agent.Job, worker_id: str = "", detail: str = "") -> None:
        self.events.emit(JobEvent(kind, job, worker_id, detail, self._clock.monotonic()))

    # -- capacity ---------------------------------------------------------------------------------
    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def is_pending(self, job_id: str) -> bool:
        """The job waits for a worker (queued or being offered)."""
        return job_id in self._pending

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def waiting(self) -> list[tuple[agent.Job, float]]:
        """Jobs waiting for a worker (queued, not being offered) with their wait deadline."""
        return [(pj.job, pj.wait) for q in self._queues.values() for pj in q.values()]

    def check_capacity(self, extra: int = 1, extra_bytes: int = 0) -> None:
        """Raise resource_exhausted when `extra` more waiting jobs would break a bound."""
        cfg = self._config
        if len(self._pending) + extra > cfg.queue_limit:
            raise TwirpError(
                "resource_exhausted",
                f"{len(self._pending)} jobs already wait for a worker (limit {cfg.queue_limit})",
            )
        if self._pending_bytes + extra_bytes > cfg.queue_bytes_limit:
            raise TwirpError(
                "resource_exhausted",
                f"jobs waiting for a worker hold {self._pending_bytes} bytes "
                f"(limit {cfg.queue_bytes_limit}); retry later or send less metadata",
            )

    # -- submission ------------------------------------------------------------------------------
    async def submit(self, job: agent.Job, deadline: float | None = None) -> None:
        """Take a new job and place it; it is stored before this returns."""
        pj = await self._admit(job, deadline, resuming=False, new=True)
        self._warn_if_unserved(pj)
        self._place(pj)

    async def simulate(self, job: agent.Job, worker: WorkerSession) -> None:
        """Offer a job to the worker that asked for it (simulate_job), nowhere else."""
        pj = await self._admit(job, None, resuming=False, new=True)
        pj.pinned = True
        self._offer(pj, worker)

    async def _admit(
        self, job: agent.Job, deadline: float | None, resuming: bool, new: bool, stored: bool = False
    ) -> PendingJob:
        """Queue a job for placement. `new`: add it to the store; else update it there, unless `stored`
        says the store holds it as pending already (a write would only move its updated_at)."""
        size = job.ByteSize()
        self.check_capacity(1, size)
        if not stored:
            job.state.status = JS_PENDING
            job.state.updated_at = self._clock.wall_ns()
        if new:
            await self._store.add_job(job)
        elif not stored:
            await self._store.update_job(job)
        wait = self._config.dispatch_deadline if deadline is None else deadline
        pj = PendingJob(job=job, key=job_key(job), size=size, wait=wait, resuming=resuming)
        self._pending[job.id] = pj
        self._pending_bytes += size
        pj.deadline_timer = asyncio.get_running_loop().call_later(wait, self._on_deadline_timer, job.id)
        self._emit(K.RESTARTING if resuming else K.CREATED, job, detail=job.state.error if resuming else "")
        return pj

    def _warn_if_unserved(self, pj: PendingJob) -> None:
        name, ns, _, dep = pj.key
        if self._registry.job_types(name, ns, dep if dep != ANY_DEPLOYMENT else ""):
            return
        log.warning(
            "no registered worker serves this agent name yet; the job waits for one",
            extra={
                "job_id": pj.job.id,
                "dispatch_id": pj.job.dispatch_id,
                "room": pj.job.room.name,
                "agent_name": name,
                "registered_agent_names": self._registry.agent_names(),
                "deadline_s": pj.wait,
            },
        )

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.spawn(coro, name)

    def _place(self, pj: PendingJob) -> None:
        if pj.pinned:
            self._tasks.spawn(self._finish_pending(pj, JS_FAILED, "simulated job was not accepted"), "sim")
            return
        if pj.expired:
            self._tasks.spawn(self._fail_no_capacity(pj), f"deadline:{pj.job.id}")
            return
        worker = self._registry.best(pj.key, exclude=pj.tried)
        if worker is None:
            pj.tried.clear()
            self._queues.setdefault(pj.key, {})[pj.job.id] = pj
            self._emit(K.QUEUED, pj.job)
            return
        self._offer(pj, worker)

    def _offer(self, pj: PendingJob, worker: WorkerSession) -> None:
        job_id = pj.job.id
        pj.tried.add(worker.id)
        pj.offered_to = worker
        self._registry.offer_made(worker, job_id)
        pj.offer_timer = asyncio.get_running_loop().call_later(
            self._config.offer_timeout, self._on_offer_timer, job_id, worker.id
        )
        msg = agent.ServerMessage(availability=agent.AvailabilityRequest(job=pj.job, resuming=pj.resuming))
        if not worker.post(msg):
            self._clear_offer(pj)
            self._registry.offer_voided(worker, job_id)
            self._retry(pj)
            return
        # the frame first, the listeners after (nothing the worker sends is read before this returns)
        self._emit(K.OFFERED, pj.job, worker.id)

    def _clear_offer(self, pj: PendingJob) -> None:
        if pj.offer_timer is not None:
            pj.offer_timer.cancel()
            pj.offer_timer = None
        pj.offered_to = None

    def _retry(self, pj: PendingJob) -> None:
        if self._pending.get(pj.job.id) is pj:
            self._place(pj)

    # -- worker answers ---------------------------------------------------------------------------
    async def on_availability(self, worker: WorkerSession, resp: agent.AvailabilityResponse) -> None:
        pj = self._pending.get(resp.job_id)
        if pj is None and resp.job_id in worker.load.jobs:
            log.info("repeated answer for a job this worker runs", extra=self._ids(resp.job_id, worker))
            return
        if pj is None or pj.offered_to is not worker:
            # late or unknown answer: the job went elsewhere, ended, or never existed
            self._registry.late_answer(worker)
            log.info("late availability answer ignored", extra=self._ids(resp.job_id, worker))
            if resp.available:
                worker.post(agent.ServerMessage(termination=agent.JobTermination(job_id=resp.job_id)))
            self.worker_available(worker)
            return
        self._clear_offer(pj)
        if resp.available:
            self._registry.offer_accepted(worker, pj.job.id)
            await self._assign(pj, worker, resp)
            self.worker_available(worker, limit=1)  # an answer pulls the next waiting job, one at a time
            return
        self._registry.offer_declined(worker, pj.job.id)
        self._emit(K.DECLINED, pj.job, worker.id, "terminate" if resp.terminate else "")
        if resp.terminate:
            await self._finish_pending(
                pj, JS_FAILED, f"worker {worker.id} refused the job and asked to end it"
            )
        else:
            self._place(pj)

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
        if not await self._store.claim_job(job):  # ended or taken meanwhile (e.g. through another node)
            log.warning("assignment lost its claim on the job; ending it", extra=self._ids(job.id, worker))
            self._registry.job_ended(worker, job.id)
            worker.post(agent.ServerMessage(termination=agent.JobTermination(job_id=job.id)))
            return
        self._owners[job.id] = Owner(worker.api_key, reg.worker_keys()[0])
        msg = agent.ServerMessage(
            assignment=agent.JobAssignment(job=job, url=self._config.public_url, token=token)
        )
        if not worker.post(msg):
            log.warning("assignment not delivered; the worker is gone", extra=self._ids(job.id, worker))
        self._emit(K.ASSIGNED, job, worker.id)  # after the frame, as for offers

    async def on_job_update(self, worker: WorkerSession, update: agent.UpdateJobStatus) -> None:
        job = await self._store.get_job(update.job_id)
        if job is None or job.state.worker_id != worker.id or job.state.status in ENDED:
            log.info(
                "job update ignored", extra={**self._ids(update.job_id, worker), "status": update.status}
            )
            return
        if update.status == JS_RUNNING:
            if job.id in self._confirmed:
                return  # a repeated report changes nothing: no store write, no event
            self._confirmed.add(job.id)
            job.state.status = JS_RUNNING
            job.state.updated_at = self._clock.wall_ns()
            await self._store.update_job(job)
            self._emit(K.RUNNING, job, worker.id)
            return
        if update.status not in ENDED:
            return
        self._registry.job_ended(worker, job.id)
        if update.status == JS_FAILED:
            error = update.error or "job failed"
            await self.restart_or_fail(job, error, worker.id, cause_of(error))
        else:
            await self._end_now(job, update.status, update.error, 0)
        self.worker_available(worker)

    async def restart_or_fail(self, job: agent.Job, error: str, failed_worker_id: str, cause: Cause) -> None:
        """A running job failed or lost its worker: run it again (resuming) or end it FAILED."""
        dispatch = await self._store.get_dispatch(job.dispatch_id)
        restarts = self._restarts.get(job.id, 0)
        facts = RestartFacts(
            cause=cause,
            policy_allows=dispatch is not None
            and dispatch.restart_policy != JRP_NEVER
            and not dispatch.state.deleted_at,
            restarts_done=restarts,
            max_restarts=self._config.max_restarts,
            audience=await self._audience(job.room.name),
            shutting_down=self.shutting_down,
        )
        refusal = restart_refusal(facts)
        if refusal is not None:
            await self._end_now(job, JS_FAILED, final_error(error, refusal), 0)
            return
        self._restarts[job.id] = restarts + 1
        self._confirmed.discard(job.id)  # the next run's JS_RUNNING is news again
        job.state.error = f"restart {restarts + 1}/{self._config.max_restarts} after: {error}"
        job.state.reason = JSR_RETRYING
        job.state.worker_id = ""
        self._owners.pop(job.id, None)
        try:
            pj = await self._admit(job, None, resuming=True, new=False)
        except TwirpError as exc:
            await self._end_now(job, JS_FAILED, f"{error} (not restarted: {exc.msg})", 0)
            return
        pj.tried.add(failed_worker_id)
        self._place(pj)

    def note_media_attempt(self, room: str, identity: str) -> None:
        """A job's agent tried WebRTC signalling (/rtc): say so when that job ends (bounded memory)."""
        if len(self._media_attempts) < 10_000:
            self._media_attempts.add((room, identity))

    async def _end_now(self, job: agent.Job, status: int, error: str, reason: int) -> None:
        key = (job.room.name, job.state.participant_identity)
        if self._media_attempts and key in self._media_attempts:
            self._media_attempts.discard(key)
            note = "the job tried to join WebRTC media (/rtc), which this server does not serve"
            error = f"{error}; {note}" if error else note
        self._set_ended(job, status, error, reason)
        await self._store.update_job(job)
        self._emit(K.ENDED, job, job.state.worker_id, error)

    # -- workers ------------------------------------------------------------------------------------
    def _emit_worker(self, kind: WorkerEventKind, worker: WorkerSession, detail: str = "") -> None:
        summary = self._registry.summary(worker)
        self.events.emit(WorkerEvent(kind, summary, detail, self._clock.monotonic()))

    def worker_registered(self, worker: WorkerSession) -> None:
        self._registry.add(worker)
        self._emit_worker(WorkerEventKind.REGISTERED, worker)
        self.worker_available(worker)

    def worker_status(self, worker: WorkerSession, update: agent.UpdateWorkerStatus) -> None:
        before = (worker.status, worker.draining, round(worker.load.reported, 2))
        self._registry.status_reported(worker, update)
        if (worker.status, worker.draining, round(worker.load.reported, 2)) != before:
            self._emit_worker(WorkerEventKind.STATUS, worker)
        # one waiting job per report; each accepted offer pulls the next: a worker near its limit that
        # reports AVAILABLE is not offered the queue up to its projection (offers follow capacity)
        self.worker_available(worker, limit=1)

    def status_heartbeat(self, worker: WorkerSession) -> bool:
        """The worker repeated its last status report byte for byte (an idle worker's periodic report):
        True when that changes nothing but the report's time, which is then recorded; False when the
        report must go through `worker_status` (a job waits for the worker's keys and a report pulls
        one, jobs or credit changed since, or a subclass extends status handling)."""
        if type(self).worker_status is not Dispatcher.worker_status:
            return False
        if self._queues and any(key in self._queues for key in worker.registration.index_keys()):
            return False
        return self._registry.status_repeated(worker)

    def worker_available(self, worker: WorkerSession, limit: int = 1 << 30) -> None:
        """A worker registered, reported, answered or freed a slot: offer waiting jobs (at most `limit`)
        to the best candidates of its keys while one is eligible."""
        if not self._queues or not self._registry.is_eligible(worker):
            return
        for key in worker.registration.index_keys():  # the keys jobs are queued under (job_key)
            queue = self._queues.get(key)
            while queue and limit > 0:
                limit -= 1
                job_id = next(iter(queue))
                pj = queue[job_id]
                candidate = self._registry.best(key, exclude=pj.tried)
                if candidate is None:
                    break
                del queue[job_id]
                self._offer(pj, candidate)
            if queue is not None and not queue:
                self._queues.pop(key, None)

    def worker_gone(self, worker: WorkerSession) -> None:
        """The connection ended: its offers go elsewhere; its running jobs wait the reconnect grace."""
        self._registry.remove(worker)
        timer = self._backoff_timers.pop(worker.id, None)
        if timer is not None:
            timer.cancel()
        for job_id in list(worker.load.offers):
            pj = self._pending.get(job_id)
            if pj is not None and pj.offered_to is worker:
                self._clear_offer(pj)
                self._retry(pj)
        running = list(worker.load.jobs)
        log.info(
            "worker disconnected",
            extra={"worker_id": worker.id, "running_jobs": len(running), "reason": worker.close_reason},
        )
        self._emit_worker(WorkerEventKind.DISCONNECTED, worker, worker.close_reason)
        if self.shutting_down:
            return  # the jobs keep running; their workers reconnect to the next server and migrate them
        loop = asyncio.get_running_loop()
        for job_id in running:
            self._orphans[job_id] = loop.call_later(
                self._config.reconnect_grace, self._orphan_expired_cb, job_id, worker.id
            )
            self._tasks.spawn(self._emit_orphaned(job_id, worker.id), f"orphaned:{job_id}")

    async def _emit_orphaned(self, job_id: str, worker_id: str) -> None:
        job = await self._store.get_job(job_id)
        if job is not None:
            self._emit(K.ORPHANED, job, worker_id, f"reconnect grace {self._config.reconnect_grace:g}s")

    def _orphan_expired_cb(self, job_id: str, worker_id: str) -> None:
        self._orphans.pop(job_id, None)
        self._tasks.spawn(self._orphan_expired(job_id, worker_id), f"orphan:{job_id}")

    async def _orphan_expired(self, job_id: str, worker_id: str) -> None:
        job = await self._store.get_job(job_id)
        if job is None or job.state.status in ENDED or job.state.worker_id != worker_id:
            return
        grace = f"worker lost (no reconnect within {self._config.reconnect_grace:g}s)"
        await self.restart_or_fail(job, grace, worker_id, Cause.LOST)

    def offer_backoff(self, worker: WorkerSession, seconds: float) -> None:
        old = self._backoff_timers.pop(worker.id, None)
        if old is not None:
            old.cancel()
        self._backoff_timers[worker.id] = asyncio.get_running_loop().call_later(
            seconds, self._backoff_over, worker.id
        )

    def _backoff_over(self, worker_id: str) -> None:
        self._backoff_timers.pop(worker_id, None)
        worker = self._registry.get(worker_id)
        if worker is not None:
            self._registry.backoff_over(worker)
            self.worker_available(worker)

    # -- migration ----------------------------------------------------------------------------------
    async def migrate(self, worker: WorkerSession, req: agent.MigrateJobRequest) -> None:
        """A (re)connected worker reports jobs it still runs: keep them with it, never run one twice.

        Accepted only from the worker that may hold the job: same API key and same worker key
        (agent name, namespace, job type, deployment) as the worker it was assigned to. A job this
        server does not know (it restarted) is adopted from `req.jobs` when its key matches the
        worker's registration. Anything else is answered with JobTermination; the job is untouched.
        """
        described = {j.id: j for j in req.jobs}
        for job_id in list(dict.fromkeys([*req.job_ids, *described]))[:MAX_MIGRATE]:
            job = await self._store.get_job(job_id)
            if job is None:
                job = await self._adopt(worker, described.get(job_id), job_id)
            refusal = self._migrate_refusal(worker, job)
            if refusal is not None or job is None:
                log.warning("migrate refused", extra={**self._ids(job_id, worker), "reason": refusal})
                worker.post(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
                continue
            await self._keep_with(worker, job)

    def _migrate_refusal(self, worker: WorkerSession, job: agent.Job | None) -> str | None:
        holder = self._registry.get(job.state.worker_id) if job is not None else None
        return migrate_refusal(worker, job, self._owners.get(job.id) if job else None, holder)

    async def _adopt(self, worker: WorkerSession, job: agent.Job | None, job_id: str) -> agent.Job | None:
        """Take in a running job this server has no record of (it restarted with an empty store).

        With the job described (`MigrateJobRequest.jobs`, as agentdispatch's worker sends) its room and
        dispatch are recreated; with only its id (livekit-agents sends ids) a bare record keeps the call
        running and lets its end be recorded.
        """
        if self._clock.monotonic() > self._adopt_until:
            return None  # long after our start an unknown job is one we ended, not one we forgot
        if job is None:
            job = bare_job(job_id, worker.registration)
        if job is None or not job.id or not key_matches(worker.registration, job):
            return None
        if job.room.name:
            await self._recreate_room_and_dispatch(job)
        job.state.status = JS_RUNNING
        job.state.worker_id = worker.id
        await self._store.add_job(job)
        log.info("adopted a running job reported by a worker", extra=self._ids(job.id, worker))
        return job

    async def _recreate_room_and_dispatch(self, job: agent.Job) -> None:
        dispatch = adopted_dispatch(job, self._clock.wall_ns())
        job.dispatch_id = dispatch.id
        await self._store.create_room(job.room)
        if await self._store.get_dispatch(dispatch.id) is None:
            await self._store.add_dispatch(dispatch)

    async def _keep_with(self, worker: WorkerSession, job: agent.Job) -> None:
        pj = self._pending.get(job.id)
        if pj is not None:
            if pj.offered_to is not None:
                self._registry.offer_voided(pj.offered_to, job.id)
            self._clear_offer(pj)
            self._forget_pending(pj)
        timer = self._orphans.pop(job.id, None)
        if timer is not None:
            timer.cancel()
        previous = job.state.worker_id
        job.state.worker_id = worker.id
        job.state.status = JS_RUNNING
        job.state.reason = JSR_UNSPECIFIED
        job.state.updated_at = self._clock.wall_ns()
        if not await self._store.claim_job(job, expected_worker=previous):
            log.warning("migrate lost its claim on the job; terminating it", extra=self._ids(job.id, worker))
            worker.post(agent.ServerMessage(termination=agent.JobTermination(job_id=job.id)))
            return
        self._owners[job.id] = Owner(worker.api_key, worker.registration.worker_keys()[0])
        self._registry.job_adopted(worker, job.id)
        self._emit(K.MIGRATED, job, worker.id)

    # -- endings --------------------------------------------------------------------------------------
    async def end_job(self, job_id: str, status: int, error: str, reason: int = 0) -> agent.Job | None:
        """End a job from the server side (termination, deletion, room closed). Idempotent."""
        pj = self._pending.get(job_id)
        if pj is not None:
            await self._finish_pending(pj, status, error, reason)
            return pj.job
        job = await self._store.get_job(job_id)
        if job is None or job.state.status in ENDED:
            return job
        timer = self._orphans.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        worker = self._registry.get(job.state.worker_id)
        if worker is not None and job_id in worker.load.jobs:
            worker.post(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
            self._registry.job_ended(worker, job_id)
        await self._end_now(job, status, error, reason)
        return job

    def _set_ended(self, job: agent.Job, status: int, error: str, reason: int) -> None:
        self._restarts.pop(job.id, None)
        self._confirmed.discard(job.id)
        self._owners.pop(job.id, None)
        now_ns = self._clock.wall_ns()
        job.state.status = status  # type: ignore[assignment]
        job.state.error = error
        job.state.reason = reason  # type: ignore[assignment]
        job.state.ended_at = now_ns
        job.state.updated_at = now_ns

    async def _finish_pending(self, pj: PendingJob, status: int, error: str, reason: int = 0) -> None:
        if pj.offered_to is not None:
            self._registry.offer_voided(pj.offered_to, pj.job.id)
        self._clear_offer(pj)
        self._forget_pending(pj)
        await self._end_now(pj.job, status, error, reason)

    def _forget_pending(self, pj: PendingJob) -> None:
        if self._pending.pop(pj.job.id, None) is not None:
            self._pending_bytes -= pj.size
        queue = self._queues.get(pj.key)
        if queue is not None:
            queue.pop(pj.job.id, None)
            if not queue:
                self._queues.pop(pj.key, None)
        if pj.deadline_timer is not None:
            pj.deadline_timer.cancel()
            pj.deadline_timer = None

    async def _fail_no_capacity(self, pj: PendingJob) -> None:
        name, _, _, dep = pj.key
        where = f"agent_name={name!r}" + ("" if dep == ANY_DEPLOYMENT else f" deployment={dep!r}")
        names = ", ".join(repr(n) for n in self._registry.agent_names()) or "none"
        await self._finish_pending(
            pj,
            JS_FAILED,
            f"no worker available within {pj.wait:g}s ({where}; registered agent names: {names})",
            JSR_NO_CAPACITY,
        )

    # -- timers (sync callbacks) -------------------------------------------------------------------
    def _on_offer_timer(self, job_id: str, worker_id: str) -> None:
        pj = self._pending.get(job_id)
        if pj is None or pj.offered_to is None or pj.offered_to.id != worker_id:
            return
        worker = pj.offered_to
        self._clear_offer(pj)
        backoff = self._registry.offer_timed_out(worker, job_id)
        self.offer_backoff(worker, backoff)
        self._emit_worker(WorkerEventKind.UNRESPONSIVE, worker, f"offer {job_id} not answered")
        self._emit(K.OFFER_TIMEOUT, pj.job, worker_id, f"no offers to it for {backoff:g}s")
        log.warning(
            "offer not answered in time; worker skipped while it backs off",
            extra={**self._ids(job_id, worker), "backoff_s": backoff},
        )
        self._retry(pj)

    def _on_deadline_timer(self, job_id: str) -> None:
        pj = self._pending.get(job_id)
        if pj is None:
            return
        pj.deadline_timer = None
        pj.expired = True
        if pj.offered_to is None:
            self._tasks.spawn(self._fail_no_capacity(pj), f"deadline:{job_id}")

    @staticmethod
    def _ids(job_id: str, worker: WorkerSession) -> dict[str, str]:
        return {"job_id": job_id, "worker_id": worker.id}

    async def aclose(self) -> None:
        self.shutting_down = True
        for pj in list(self._pending.values()):
            self._clear_offer(pj)
            if pj.deadline_timer is not None:
                pj.deadline_timer.cancel()
        for timer in [*self._orphans.values(), *self._backoff_timers.values()]:
            timer.cancel()
        self._orphans.clear()
        self._backoff_timers.clear()
        await self._tasks.aclose()
